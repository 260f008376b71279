"""Group commit: writes that arrive while earlier ones are in flight go to Postgres
together, in one call and one transaction.

Each ``submit()`` waits for its own result, and a result is only handed out after its
batch committed, so nothing is acknowledged before it is durable. At most
``max_inflight`` batches run at once. A write that arrives while they all run waits for
the next batch, which takes up to ``max_batch`` of the waiting writes. Under light load
every batch holds one write and nothing waits; under load the batches grow on their own,
and one commit, one round trip and one pool checkout carry many writes.

With ``spare_after_s``, the slots beyond the first are spares: a further batch starts
while another is in flight only once the batch started last has run that long. A burst
then goes in as few batches as one slot allows, and a batch stuck on a slow peer (a
paused replica, until the bus times it out) holds the others up for that long at most.

The same pattern batches other round trips too (the gateway's `ready` and `sync`
requests and presence session opens and closes, the rate limiter's Redis checks), with a
size histogram of their own. The metric names (``chat_db_batch_size``,
``chat_db_batch_splits_total``) date from when it batched only database writes; they are
kept so dashboards and alerts keep working.

A batch that fails as a whole for a reason of its own (a deadlock, a constraint) is
retried one write at a time, so one write's error stays its own. A batch that fails
because the database is unavailable fails every write in it, as single writes would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from prometheus_client import Counter, Histogram

from libs.errors import ChatError, Unavailable
from libs.resilience.tasks import being_cancelled

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

BATCH_SIZE = Histogram("chat_db_batch_size", "Writes carried by one group-commit batch", ["batch"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
BATCH_SPLITS = Counter("chat_db_batch_splits_total",
                       "Group-commit batches that failed as a whole and were retried one write at a time",
                       ["batch"])


class GroupCommit(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], *, name: str,
                 max_batch: int = 64, max_inflight: int = 4, spare_after_s: float | None = None,
                 size_metric: Histogram = BATCH_SIZE) -> None:
        self._run = run
        self.name = name
        self.max_batch = max(1, max_batch)
        self.max_inflight = max(1, max_inflight)
        self.spare_after_s = spare_after_s
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._inflight = 0
        self._last_start = 0.0  # loop time the latest batch started
        self._spare_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._size = size_metric.labels(name)

    async def submit(self, item: T) -> R:
        return await self.submit_nowait(item)

    def submit_nowait(self, item: T) -> asyncio.Future[R]:
        """Queue ``item`` and return the future of its result without waiting for it (the
        caller adds a done callback, or awaits it later)."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, fut))
        self._next()
        return fut

    def _next(self) -> None:
        """Start a batch of the waiting writes if a slot is free for it; when only a spare
        slot is left, once the batch started last has run ``spare_after_s``."""
        if not self._waiting or self._inflight >= self.max_inflight:
            return
        if self._inflight == 0 or self.spare_after_s is None:
            self._start()
            return
        loop = asyncio.get_running_loop()
        due = self._last_start + self.spare_after_s
        if loop.time() >= due:
            self._start()
        elif self._spare_timer is None:
            self._spare_timer = loop.call_at(due, self._spare_due)

    def _spare_due(self) -> None:
        self._spare_timer = None
        self._next()

    def _start(self) -> None:
        batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
        self._inflight += 1
        self._last_start = asyncio.get_running_loop().time()
        task = asyncio.create_task(self._commit(batch), name=f"group-commit-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            self._size.observe(len(batch))
            await self._settle(batch)
        except asyncio.CancelledError:  # stopping: nobody is left without an answer
            # Unavailable, not CancelledError: a submitter would take that for its own
            # cancellation and skip its error handling.
            _fail(batch, Unavailable(f"{self.name}: stopping"))
            raise
        except Exception as exc:  # pragma: no cover - _settle answers every write itself
            log.exception("group commit %s: batch failed", self.name)
            _fail(batch, exc)
        finally:
            self._inflight -= 1
            self._next()

    async def _settle(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} writes")
        except ChatError as exc:  # the database is unavailable: every write fails alike
            _fail(batch, exc)
            return
        except asyncio.CancelledError:
            if being_cancelled():
                raise  # this batch's task is being stopped
            # A future cancelled by someone else (a client library closing a connection)
            # ended the call: every write of the batch fails as unavailable.
            log.warning("group commit %s: a batch of %d was cancelled by another task", self.name, len(batch))
            _fail(batch, Unavailable(f"{self.name}: cancelled"))
            return
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            BATCH_SPLITS.labels(self.name).inc()
            log.warning("group commit %s: a batch of %d failed (%s: %s); retrying one at a time",
                        self.name, len(batch), type(exc).__name__, exc)
            for one in batch:  # in order: the seqs of a channel keep following arrival order
                await self._settle([one])
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)


def _fail(batch: list[tuple[T, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(exc)
