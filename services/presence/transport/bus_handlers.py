"""Presence's NATS handlers: decode -> PresenceService -> encode, under the Redis breaker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import redis.exceptions
from prometheus_client import Counter

from libs.bus import schemas, subjects
from libs.bus.client import Bus
from libs.bus.subjects import PresenceOps as Ops
from libs.errors import Invalid, Unavailable
from libs.resilience.breaker import CircuitBreaker
from services.presence.domain.status import STATUSES
from services.presence.presence import PresenceService

log = logging.getLogger(__name__)
_heartbeat = msgspec.json.Decoder(schemas.NodeHeartbeat)


_created = msgspec.json.Decoder(schemas.MessageCreated)
TYPING_END_FAILURES = Counter("chat_presence_typing_end_failures_total",
                              "message.created events whose typing end failed or could not be read", ["reason"])
TYPING_END_CHUNK = 500  # (user, channel) pairs per Redis round trip
MAX_BATCH = 1000  # sessions per session_open_many / session_close_many request


class PresenceHandlers:
    def __init__(self, presence: PresenceService, bus: Bus, breaker: CircuitBreaker, timeout_s: float) -> None:
        self.p = presence
        self.bus = bus
        self.breaker = breaker
        self.timeout_s = timeout_s
        self._sent: list[tuple[str, str]] = []  # (author, channel) of messages seen, not yet handled
        self._ending: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def redis(self) -> AsyncIterator[None]:
        async with self.breaker.guard():
            try:
                yield
            except (TimeoutError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                raise Unavailable(f"presence store unavailable ({type(exc).__name__})") from None

    def _wrap(self, fn: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
        async def run(req: Any) -> Any:
            async with self.redis():
                return await asyncio.wait_for(fn(req), self.timeout_s * 5)
        return run

    async def register(self) -> None:
        q = subjects.queue_group("presence")
        table: list[tuple[str, Callable[[Any], Awaitable[Any]], type]] = [
            (Ops.SESSION_OPEN, self.p.open, schemas.SessionOpen),
            (Ops.SESSION_CLOSE, self.session_close, schemas.SessionClose),
            (Ops.SESSION_OPEN_MANY, self.session_open_many, schemas.SessionOpenMany),
            (Ops.SESSION_CLOSE_MANY, self.session_close_many, schemas.SessionCloseMany),
            (Ops.UPDATE, self.update, schemas.PresenceUpdate),
            (Ops.TYPING_START, self.typing_start, schemas.TypingRequest),
            (Ops.TYPING_STOP, self.typing_stop, schemas.TypingRequest),
            (Ops.QUERY, self.query, schemas.PresenceQuery),
            (Ops.NODE_SESSIONS, self.node_sessions, schemas.NodeSessions),
        ]
        for op, fn, typ in table:
            await self.bus.serve(subjects.service_request("presence", op), self._wrap(fn), typ, queue=q)
        await self.bus.subscribe(subjects.node_heartbeat(), self.on_heartbeat, queue=q)
        await self.bus.subscribe(subjects.message_created(), self.on_message_created, queue=q)

    async def session_close(self, req: schemas.SessionClose) -> schemas.Empty:
        await self.p.close(req.user_id, req.session_id, req.node)
        return schemas.Empty()

    async def session_open_many(self, req: schemas.SessionOpenMany) -> schemas.SessionOpenManyReply:
        if len(req.sessions) > MAX_BATCH:
            raise Invalid(f"sessions: at most {MAX_BATCH}")
        return schemas.SessionOpenManyReply(replies=await self.p.open_many(req.sessions))

    async def session_close_many(self, req: schemas.SessionCloseMany) -> schemas.Empty:
        if len(req.sessions) > MAX_BATCH:
            raise Invalid(f"sessions: at most {MAX_BATCH}")
        await self.p.close_many(req.sessions)
        return schemas.Empty()

    async def update(self, req: schemas.PresenceUpdate) -> schemas.Empty:
        if req.status not in STATUSES:
            raise Invalid("status: must be online, idle, dnd or invisible")
        await self.p.update(req)
        return schemas.Empty()

    async def typing_start(self, req: schemas.TypingRequest) -> schemas.Empty:
        await self.p.typing_start(req.user_id, req.channel_id)
        return schemas.Empty()

    async def typing_stop(self, req: schemas.TypingRequest) -> schemas.Empty:
        await self.p.typing_stop(req.user_id, req.channel_id, "sent")
        return schemas.Empty()

    async def query(self, req: schemas.PresenceQuery) -> schemas.PresenceList:
        if len(req.user_ids) > 1000:
            raise Invalid("user_ids: at most 1000")
        return schemas.PresenceList(presences=await self.p.visible(req.user_ids))

    async def node_sessions(self, req: schemas.NodeSessions) -> schemas.Empty:
        await self.p.node_sessions(req)
        return schemas.Empty()

    async def on_message_created(self, msg: Any) -> None:
        """A sent message ends its author's typing in that channel, whichever session or
        node it came from. Events of one moment are handled together, off the
        subscription's callback (which would otherwise hold the next event)."""
        try:
            ev = _created.decode(msg.data)
        except msgspec.DecodeError as exc:
            TYPING_END_FAILURES.labels("undecodable").inc()
            log.warning("undecodable message.created event: %s", exc)
            return
        self._sent.append((ev.message.author.id, ev.channel_id))
        if self._ending is None or self._ending.done():
            self._ending = asyncio.create_task(self._end_typing(), name="presence-typing-sent")

    async def _end_typing(self) -> None:
        while self._sent:
            batch, self._sent = self._sent[:TYPING_END_CHUNK], self._sent[TYPING_END_CHUNK:]
            try:
                async with self.redis():
                    await asyncio.wait_for(self.p.typing_stop_many(batch, "sent"), self.timeout_s * 5)
            except Exception as exc:
                TYPING_END_FAILURES.labels("store").inc(len(batch))
                log.warning("typing not ended for %d sent messages: %s: %s", len(batch), type(exc).__name__, exc)

    async def on_heartbeat(self, msg: Any) -> None:
        try:
            hb = _heartbeat.decode(msg.data)
            async with self.redis():
                await asyncio.wait_for(self.p.heartbeat(hb), self.timeout_s * 3)
        except Exception as exc:
            log.warning("heartbeat not recorded: %s: %s", type(exc).__name__, exc)
