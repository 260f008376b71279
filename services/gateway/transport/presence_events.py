"""Gateway side of presence and typing: session registration (and the presences in
`ready`), `typing:start`, `presence:update`, node heartbeats, and re-registration when
presence asks for it. (A sent message ends its author's typing in presence, which sees
messaging's `message.created`.)"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable
from typing import Any

import msgspec
from prometheus_client import Counter, Histogram

from libs.batching.group_commit import GroupCommit
from libs.bus import schemas, subjects
from libs.bus.subjects import PresenceOps as Ops
from libs.errors import NotFound
from libs.sio.redis_manager import channel_room
from libs.validation.text import clean_plain
from services.gateway.adapters.sessions import Session
from services.gateway.domain import payloads as p
from services.gateway.transport.socket_events import BATCH_SPARE_AFTER_S, BATCHES_INFLIGHT, Ack, SocketGateway, ok

log = logging.getLogger(__name__)

PRESENCE_FAILURES = Counter("chat_gateway_presence_failures_total", "Presence calls that failed", ["op"])
PRESENCE_BATCH = Histogram("chat_gateway_presence_batch_size", "Sessions carried by one presence open or close request",
                           ["batch"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
SESSION_BATCH_MAX = 256  # sessions per open / close request to presence
TYPING_SECONDS = 10
HEARTBEAT_S = 5.0
RESYNC_CHUNK = 500


def register(gw: SocketGateway) -> None:
    feature = PresenceFeature(gw)
    gw.connect_hooks.append(feature.on_connect)
    gw.disconnect_hooks.append(feature.on_disconnect)
    gw.add_event("typing:start", p.ChannelRef, feature.typing_start, "typing")
    gw.add_event("presence:update", p.PresenceUpdate, feature.presence_update, "presence")
    gw.control_ops["presence_resync"] = feature.resync
    gw.background.append(feature.heartbeat_loop)


IDS_PER_REQUEST = 8000  # user and guild ids in one presence request: about 100 KB, replies under 1 MB


def by_ids(sessions: list[schemas.SessionOpen], limit: int = IDS_PER_REQUEST,
           max_sessions: int | None = None) -> list[list[schemas.SessionOpen]]:
    """Consecutive chunks of ``sessions`` carrying at most ``limit`` ids each (a session
    with more goes alone), and at most ``max_sessions`` sessions when given."""
    chunks: list[list[schemas.SessionOpen]] = []
    size = limit
    for s in sessions:
        n = 1 + len(s.guild_ids) + len(s.friend_ids) + len(s.contact_ids)
        if size + n > limit or (max_sessions is not None and len(chunks[-1]) >= max_sessions):
            chunks.append([])
            size = 0
        chunks[-1].append(s)
        size += n
    return chunks


class PresenceFeature:
    def __init__(self, gw: SocketGateway) -> None:
        self.gw = gw
        # A connect burst (a reconnect storm, a deploy) sends presence one request per batch
        # of sessions instead of one per session; alone, a session is sent at once.
        self._opens: GroupCommit[schemas.SessionOpen, schemas.SessionOpenReply] = GroupCommit(
            self._open_batch, name="session_open", max_batch=SESSION_BATCH_MAX,
            max_inflight=BATCHES_INFLIGHT, spare_after_s=BATCH_SPARE_AFTER_S, size_metric=PRESENCE_BATCH)
        self._closes: GroupCommit[schemas.SessionClose, None] = GroupCommit(
            self._close_batch, name="session_close", max_batch=SESSION_BATCH_MAX,
            max_inflight=BATCHES_INFLIGHT, spare_after_s=BATCH_SPARE_AFTER_S, size_metric=PRESENCE_BATCH)

    async def _open_batch(self, batch: list[schemas.SessionOpen]) -> list[schemas.SessionOpenReply]:
        # Requests (and their replies of presences) stay well under NATS' 1 MB payload limit.
        async def one(chunk: list[schemas.SessionOpen]) -> list[schemas.SessionOpenReply]:
            reply = await self.gw.request("presence", Ops.SESSION_OPEN_MANY, schemas.SessionOpenMany(sessions=chunk),
                                          schemas.SessionOpenManyReply)
            return reply.replies
        parts = await asyncio.gather(*(one(chunk) for chunk in by_ids(batch)))
        return [reply for part in parts for reply in part]

    async def _close_batch(self, batch: list[schemas.SessionClose]) -> list[None]:
        await self.gw.request("presence", Ops.SESSION_CLOSE_MANY, schemas.SessionCloseMany(sessions=batch),
                              schemas.Empty)
        return [None] * len(batch)

    @staticmethod
    async def _soft(op: str, call: Awaitable[Any]) -> Any:
        """A presence call whose failure costs only presence: counted, logged, None."""
        try:
            return await call
        except Exception as exc:
            PRESENCE_FAILURES.labels(op).inc()
            log.warning("presence %s failed: %s", op, exc)
            return None

    def _open(self, s: Session, contacts: list[str], announce: bool = True) -> schemas.SessionOpen:
        return schemas.SessionOpen(user=schemas.UserRef(id=s.user_id, name=s.name), session_id=s.session_id,
                                   node=self.gw.node_id, guild_ids=sorted(s.presence_guilds), friend_ids=sorted(s.friends),
                                   contact_ids=contacts, announce=announce)

    async def _call(self, op: str, req: Any, reply: type = schemas.Empty) -> Any:
        return await self._soft(op, self.gw.request("presence", op, req, reply))

    async def on_connect(self, s: Session, ready: schemas.ReadyReply, payload: dict[str, Any]) -> None:
        reply = await self._soft(Ops.SESSION_OPEN, self._opens.submit(self._open(s, ready.contact_ids)))
        if reply is not None:
            payload["presences"] = msgspec.to_builtins(reply.presences)

    async def on_disconnect(self, s: Session, last: bool) -> None:
        await self._soft(Ops.SESSION_CLOSE, self._closes.submit(schemas.SessionClose(
            user_id=s.user_id, session_id=s.session_id, node=self.gw.node_id)))

    async def typing_start(self, s: Session, m: p.ChannelRef) -> Ack:
        if m.channel_id not in s.channels:
            raise NotFound("channel not found")
        await self.gw.sio.emit("typing", {"channel_id": m.channel_id, "user_id": s.user_id,
                                          "expires_in_ms": TYPING_SECONDS * 1000},
                               room=channel_room(m.channel_id), skip_sid=s.sid)
        await self._call(Ops.TYPING_START, schemas.TypingRequest(user_id=s.user_id, channel_id=m.channel_id))
        return ok()

    async def presence_update(self, s: Session, m: p.PresenceUpdate) -> Ack:
        activity = None
        if m.activity is not None:
            activity = schemas.Activity(name=clean_plain(m.activity.name, 128), kind=clean_plain(m.activity.kind, 32))
        await self.gw.request("presence", Ops.UPDATE, schemas.PresenceUpdate(
            user_id=s.user_id, status=m.status, activity=activity), schemas.Empty)
        return ok()

    async def heartbeat_loop(self) -> None:
        await self.gw.bus.wait_connected()
        while True:
            try:
                await self.gw.bus.publish(subjects.node_heartbeat(), schemas.NodeHeartbeat(
                    node=self.gw.node_id, sessions=len(self.gw.sessions), interval_s=HEARTBEAT_S))
            except Exception as exc:
                log.warning("heartbeat not sent: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def resync(self, _ctl: schemas.GatewayControl) -> None:
        """Presence lost track of this node's sessions (Redis or presence was away)."""
        sessions = [self._open(s, []) for s in self.gw.sessions.by_sid.values()]
        generation = secrets.token_hex(6)
        log.info("re-registering %d sessions with presence", len(sessions))
        chunks = by_ids(sessions, max_sessions=RESYNC_CHUNK) or [[]]
        for i, chunk in enumerate(chunks):
            await self._call(Ops.NODE_SESSIONS, schemas.NodeSessions(
                node=self.gw.node_id, generation=generation, sessions=chunk, final=i == len(chunks) - 1))
