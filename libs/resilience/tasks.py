"""Task lifecycle: stopping background tasks, and telling a task's own cancellation from
a CancelledError that reached it from a future someone else cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any


def being_cancelled() -> bool:
    """Whether the current task itself is being cancelled. A CancelledError raised while
    this is False came from a future another task cancelled (a client library closing its
    connection, say): an error of the call that awaited it, not a reason to stop."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until they have ended."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def background(stack: AsyncExitStack, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run ``coro`` as a task until ``stack`` closes; it is cancelled and awaited then."""
    task = asyncio.create_task(coro, name=name)
    stack.push_async_callback(cancel_and_wait, task)
    return task
