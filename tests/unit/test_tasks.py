"""Task lifecycle helpers (libs.resilience.tasks)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from libs.resilience.tasks import background, being_cancelled


async def test_background_tasks_end_with_their_stack():
    ended: list[str] = []

    async def job(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    async with AsyncExitStack() as stack:
        a = background(stack, job("a"), "job-a")
        b = background(stack, job("b"), "job-b")
        await asyncio.sleep(0)
        assert a.get_name() == "job-a" and not a.done() and not b.done()
    assert a.done() and b.done() and sorted(ended) == ["a", "b"]


async def test_being_cancelled_tells_a_tasks_own_cancellation_from_someone_elses():
    seen: list[bool] = []
    other = asyncio.get_running_loop().create_future()
    started = asyncio.Event()

    async def waiter(fut: asyncio.Future[None]) -> None:
        try:
            started.set()
            await fut
        except asyncio.CancelledError:
            seen.append(being_cancelled())
            if being_cancelled():
                raise

    task = asyncio.create_task(waiter(other))
    await started.wait()
    other.cancel()  # another task's future: the waiter goes on
    await task
    started.clear()
    task = asyncio.create_task(waiter(asyncio.get_running_loop().create_future()))
    await started.wait()
    task.cancel()  # the waiter itself
    await asyncio.gather(task, return_exceptions=True)
    assert seen == [False, True] and task.cancelled()
