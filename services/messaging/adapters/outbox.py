"""Drains the transactional outbox into the JetStream stream CHAT_EVENTS.

Each row is published with ``Nats-Msg-Id`` = its event id, so a retry after a crash
between publish and delete is de-duplicated by JetStream (duplicate window 2 minutes).
A published row is deleted: the outbox holds only what JetStream does not have yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from nats.js.api import StreamConfig
from prometheus_client import Counter, Gauge

from libs.bus import subjects
from libs.bus.client import Bus
from libs.db.database import Database
from libs.errors import ChatError
from libs.resilience.backoff import Backoff

log = logging.getLogger(__name__)

OUTBOX_PUBLISHED = Counter("chat_messaging_outbox_published_total", "Domain events published to JetStream")
OUTBOX_ERRORS = Counter("chat_messaging_outbox_errors_total", "Failed outbox drain attempts")
OUTBOX_PENDING = Gauge("chat_messaging_outbox_pending_events", "Outbox rows not yet published (last drain)")


class OutboxPublisher:
    def __init__(self, db: Database, bus: Bus, backoff: Backoff, batch: int = 200, linger_s: float = 0.05) -> None:
        self.db = db
        self.linger_s = linger_s  # after a wake, wait this long so a burst's rows go in one batch
        self.bus = bus
        self.backoff = backoff
        self.batch = batch
        self._js: Any = None  # one JetStream context: publish_async keeps its reply inbox there
        self._js_nc: Any = None
        self._counted_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stream_ready = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _ensure_stream(self) -> None:
        if self._stream_ready:
            return
        assert self.bus.nc is not None
        js = self.bus.nc.jetstream()
        cfg = StreamConfig(name=subjects.EVENTS_STREAM, subjects=[subjects.EVENTS_WILDCARD],
                           duplicate_window=120.0, max_age=7 * 24 * 3600.0)
        try:
            await js.stream_info(subjects.EVENTS_STREAM)
        except Exception:
            await js.add_stream(cfg)
        self._stream_ready = True

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), 2.0)
            except TimeoutError:
                pass
            if self.linger_s > 0 and self._wake.is_set():
                # A drain costs several round trips whatever its size (a transaction, the
                # select, the publishes, the update): the events of the next few tens of
                # milliseconds go with this one. Live delivery does not wait for the outbox.
                await asyncio.sleep(self.linger_s)
            self._wake.clear()
            try:
                while await self.drain_once():
                    pass
                self.backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                OUTBOX_ERRORS.inc()
                delay = self.backoff.next_delay()
                log.warning("outbox drain failed (%s: %s); retry in %.1fs", type(exc).__name__, exc, delay)
                self._stream_ready = False
                self._js = None
                await asyncio.sleep(delay)

    async def drain_once(self) -> bool:
        """Publish one batch; True when a full batch went out (more may be waiting). The
        batch is published pipelined (every message sent, then every ack awaited) and
        deleted in the same transaction; a failure leaves the rows for the next
        drain, and JetStream drops the re-published duplicates by ``Nats-Msg-Id``."""
        if not self.bus.connected or self.db.pool is None:
            return False
        await self._ensure_stream()
        assert self.bus.nc is not None
        if self._js is None or self._js_nc is not self.bus.nc:
            self._js, self._js_nc = self.bus.nc.jetstream(), self.bus.nc
        js = self._js
        try:
            async with self.db.transaction() as conn:
                rows = await conn.fetch(
                    "SELECT id, event_id, subject, payload::text AS payload FROM outbox "
                    "WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED", self.batch)
                if rows:
                    acks = [await js.publish_async(r["subject"], r["payload"].encode(),
                                                   headers={"Nats-Msg-Id": str(r["event_id"])}) for r in rows]
                    await asyncio.wait_for(asyncio.gather(*acks), 5)
                    # Published rows go: the event is in JetStream (and in channel_events), and a
                    # delete costs Postgres less than an update that moves every index entry.
                    await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
                    OUTBOX_PUBLISHED.inc(len(rows))
                if time.monotonic() - self._counted_at > 1.0:  # the gauge, at most once a second
                    self._counted_at = time.monotonic()
                    pending = await conn.fetchval("SELECT count(*) FROM outbox")
                    OUTBOX_PENDING.set(max(0, pending - len(rows)))
        except ChatError:
            return False
        return len(rows) == self.batch
