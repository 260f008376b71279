"""Tell every gateway node to act on a user's sockets, and wait for them to confirm.

The number of live gateway nodes is not known here, so a control message is published on
the broadcast subject with a fresh reply inbox ("request many"): replies are gathered
until ``settle_s`` after the first one, and never for longer than ``timeout_s`` in all.
A node that confirms has already applied the control to its local sockets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg

from libs.bus import schemas, subjects
from libs.bus.client import Bus
from libs.errors import Unavailable
from libs.observability.tracing import inject_headers
from services.moderation import metrics

log = logging.getLogger(__name__)

_NO_RESPONDERS = "503"


@dataclass
class FanoutResult:
    acked: list[str] = field(default_factory=list)
    failed: int = 0
    elapsed_s: float = 0.0


class GatewayFanout:
    def __init__(self, bus: Bus, *, timeout_s: float = 2.0, settle_s: float = 1.0) -> None:
        self.bus = bus
        self.timeout_s = timeout_s
        self.settle_s = settle_s

    async def broadcast(self, ctl: schemas.GatewayControl) -> FanoutResult:
        """Publish ``ctl`` to every gateway node and gather their confirmations.

        Raises :class:`Unavailable` when the bus is away (nothing was sent)."""
        nc = self.bus.nc
        if nc is None or not nc.is_connected:
            raise Unavailable("message bus unavailable")
        result = FanoutResult()
        started = time.monotonic()
        first = asyncio.Event()
        nobody = asyncio.Event()

        async def on_reply(msg: Msg) -> None:
            if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS and not msg.data:
                nobody.set()
                return
            try:
                body: Any = msgspec.json.decode(msg.data)
            except msgspec.DecodeError:
                body = None
            if isinstance(body, dict) and body.get("ok") is True:
                result.acked.append(str(body.get("node", "?")))
            else:
                result.failed += 1
            first.set()

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=on_reply)
        try:
            await nc.publish(subjects.gateway_broadcast(), schemas.dumps(ctl), reply=inbox,
                             headers=inject_headers() or None)
            metrics.CONTROL_SENT.labels(ctl.op).inc()
            await self._gather(first, nobody, started)
        finally:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:  # the connection went away; the inbox dies with it
                log.debug("could not unsubscribe the reply inbox: %s", type(exc).__name__)
        result.elapsed_s = time.monotonic() - started
        metrics.CONTROL_ACKS.inc(len(result.acked))
        if result.failed:
            metrics.CONTROL_NODE_FAILED.inc(result.failed)
        if not result.acked:
            metrics.CONTROL_UNACKED.inc()
        return result

    async def _gather(self, first: asyncio.Event, nobody: asyncio.Event, started: float) -> None:
        deadline = started + self.timeout_s
        waiters = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(nobody.wait())]
        try:
            await asyncio.wait(waiters, timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if not first.is_set():
            return  # no node answered (or none is subscribed at all)
        await asyncio.sleep(max(0.0, min(self.settle_s, deadline - time.monotonic())))
