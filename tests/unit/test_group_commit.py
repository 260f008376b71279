"""Group commit (libs.batching.group_commit): batches form only while earlier ones are in
flight, every write gets its own answer, and one write's error stays its own."""

from __future__ import annotations

import asyncio

import pytest

from libs.batching.group_commit import GroupCommit
from libs.errors import Unavailable


class Writer:
    """Stands in for the database call: records each batch, answers item * 10."""

    def __init__(self, fail_on: str | None = None, unavailable: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.unavailable = unavailable

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)
        if self.unavailable:
            raise Unavailable("database unavailable")
        if self.fail_on in items:
            raise ValueError("constraint")
        return [i * 2 for i in items]


async def test_a_lone_write_goes_at_once_and_writes_during_a_batch_go_together():
    w = Writer()
    gc: GroupCommit[str, str] = GroupCommit(w, name="t", max_batch=8, max_inflight=1)
    assert await gc.submit("a") == "aa"
    results = await asyncio.gather(*(gc.submit(str(i)) for i in range(20)))
    assert results == [str(i) * 2 for i in range(20)]
    assert w.batches[0] == ["a"]
    assert w.batches[1] == ["0"]  # the first one found nothing in flight
    assert [len(b) for b in w.batches[2:]] == [8, 8, 3]  # the rest waited, in order, up to max_batch
    assert [i for b in w.batches[1:] for i in b] == [str(i) for i in range(20)]


async def test_a_failed_batch_is_retried_one_write_at_a_time():
    w = Writer(fail_on="bad")
    gc: GroupCommit[str, str] = GroupCommit(w, name="t", max_inflight=1)
    first = asyncio.ensure_future(gc.submit("x"))  # holds the one slot, so the rest batch up
    rest = [asyncio.ensure_future(gc.submit(i)) for i in ("a", "bad", "c")]
    assert await first == "xx"
    done = await asyncio.gather(*rest, return_exceptions=True)
    assert done[0] == "aa" and done[2] == "cc"
    assert isinstance(done[1], ValueError)
    assert w.batches[1:] == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


async def test_database_unavailable_fails_the_batch_without_retries():
    w = Writer(unavailable=True)
    gc: GroupCommit[str, str] = GroupCommit(w, name="t", max_inflight=1)
    done = await asyncio.gather(*(gc.submit(i) for i in "abc"), return_exceptions=True)
    assert all(isinstance(d, Unavailable) for d in done)
    assert len(w.batches) == 2  # ["a"], then ["b", "c"]: no one-at-a-time retries


async def test_a_cancelled_submitter_does_not_stop_the_others():
    w = Writer()
    gc: GroupCommit[str, str] = GroupCommit(w, name="t", max_inflight=1)
    first = asyncio.ensure_future(gc.submit("x"))
    a, b = asyncio.ensure_future(gc.submit("a")), asyncio.ensure_future(gc.submit("b"))
    await asyncio.sleep(0)
    a.cancel()
    assert await first == "xx" and await b == "bb"
    with pytest.raises(asyncio.CancelledError):
        await a
    assert gc._inflight == 0 and not gc._waiting


async def test_a_call_cancelled_from_elsewhere_fails_its_batch_as_unavailable():
    """A future the call awaited was cancelled by another task (a client library closing its
    connection): the batch's writers get `unavailable`, not a CancelledError they would take
    for their own cancellation, and the next batch runs."""
    cut = asyncio.get_running_loop().create_future()
    calls = 0

    async def run(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return [i * 2 for i in items] if await cut else []
        return [i * 2 for i in items]

    gc: GroupCommit[str, str] = GroupCommit(run, name="t", max_inflight=1)
    first = asyncio.ensure_future(gc.submit("a"))
    await asyncio.sleep(0)
    cut.cancel()  # not the batch's task: someone else's future
    with pytest.raises(Unavailable):
        await first
    assert await gc.submit("b") == "bb"
    assert gc._inflight == 0


async def test_a_stopped_batch_answers_its_writers_unavailable():
    started = asyncio.Event()

    async def run(items: list[str]) -> list[str]:
        started.set()
        await asyncio.sleep(10)
        return items

    gc: GroupCommit[str, str] = GroupCommit(run, name="t", max_inflight=1)
    writes = [asyncio.ensure_future(gc.submit(i)) for i in "ab"]  # "a" goes, "b" waits for it
    for _ in writes:
        await started.wait()
        started.clear()
        for task in list(gc._tasks):
            task.cancel()  # the process stopping
    done = await asyncio.gather(*writes, return_exceptions=True)
    assert all(isinstance(d, Unavailable) for d in done), done


async def test_a_spare_slot_opens_only_behind_a_slow_batch():
    """With a spare slot, a burst waits for the one batch in flight while that is quick, and
    goes in the spare slot once it has run ``spare_after_s`` (a peer stuck until timeout)."""
    release = asyncio.Event()
    batches: list[list[str]] = []

    async def run(items: list[str]) -> list[str]:
        batches.append(list(items))
        if items[0] == "stuck":
            await release.wait()
        else:
            await asyncio.sleep(0.01)
        return [i * 2 for i in items]

    gc: GroupCommit[str, str] = GroupCommit(run, name="t", max_inflight=2, spare_after_s=0.5)
    quick = asyncio.ensure_future(gc.submit("q"))
    burst = [asyncio.ensure_future(gc.submit(i)) for i in "abc"]
    assert await quick == "qq" and await asyncio.gather(*burst) == ["aa", "bb", "cc"]
    assert batches == [["q"], ["a", "b", "c"]]  # the burst waited for the quick batch, not for a slot

    batches.clear()
    stuck = asyncio.ensure_future(gc.submit("stuck"))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    behind = [asyncio.ensure_future(gc.submit(i)) for i in "de"]
    await asyncio.sleep(0.1)
    assert batches == [["stuck"]]  # the spare is not open yet
    assert await asyncio.gather(*behind) == ["dd", "ee"]  # through the spare, with "stuck" still in flight
    assert 0.45 <= loop.time() - sent < 5.0
    assert batches == [["stuck"], ["d", "e"]] and not stuck.done()
    release.set()
    assert await stuck == "stuckstuck"
    assert gc._inflight == 0 and gc._spare_timer is None
