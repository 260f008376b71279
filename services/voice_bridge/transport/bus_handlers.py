"""Voice bridge's NATS handlers: decode -> domain + state store -> emit -> encode.

``SESSION_GONE`` is the one cleanup entry point: the gateway calls it when a socket
ends, and presence's ``SessionsGone`` announcements (a dead gateway node) are handled
the same way, session by session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg
from prometheus_client import Counter

from libs.bus import schemas, subjects
from libs.bus.client import Bus
from libs.bus.subjects import MessagingOps, VoiceOps
from libs.errors import ChatError, Conflict
from libs.sio.redis_manager import ResilientRedisManager, channel_room
from services.voice_bridge.adapters.livekit import LiveKit
from services.voice_bridge.adapters.state_store import Stored, VoiceStateStore
from services.voice_bridge.domain import voice_state as rules
from services.voice_bridge.domain.voice_state import StateChange, VoiceRecord

log = logging.getLogger(__name__)

JOINS = Counter("chat_voice_joins_total", "Voice joins stored (moves included)")
MOVES = Counter("chat_voice_moves_total", "Joins that moved a user from another voice channel")
JOIN_REJECTED = Counter("chat_voice_join_rejected_total", "Voice joins refused, by error code", ["code"])
UPDATES = Counter("chat_voice_updates_total", "Mute/deaf changes stored")
KEEPALIVES = Counter("chat_voice_keepalives_total", "Voice state TTL refreshes, by outcome", ["outcome"])
LEAVES = Counter("chat_voice_leaves_total", "Voice states ended, by cause", ["cause"])
EMITS = Counter("chat_voice_state_emits_total", "voice:state events handed to the Socket.IO adapter", ["connected"])
EMIT_FAILURES = Counter("chat_voice_emit_failures_total", "voice:state events that could not be queued")
PRESENCE_EVENTS = Counter("chat_voice_presence_events_total", "Presence announcements seen, by outcome", ["outcome"])
CAS_EXHAUSTED = Counter("chat_voice_cas_exhausted_total", "Voice changes given up after repeated concurrent changes")

CAS_ATTEMPTS = 5
_sessions_gone_decoder = msgspec.json.Decoder(schemas.SessionsGone)


class VoiceHandlers:
    def __init__(self, store: VoiceStateStore, livekit: LiveKit, bus: Bus, emitter: ResilientRedisManager,
                 *, keepalive_s: float) -> None:
        self.store = store
        self.livekit = livekit
        self.bus = bus
        self.emitter = emitter
        self.keepalive_s = keepalive_s

    async def register(self) -> None:
        q = subjects.queue_group("voice")
        table: list[tuple[str, Any, type]] = [
            (VoiceOps.JOIN, self.join, schemas.VoiceJoinRequest),
            (VoiceOps.UPDATE, self.update, schemas.VoiceUpdateRequest),
            (VoiceOps.LEAVE, self.leave, schemas.VoiceLeaveRequest),
            (VoiceOps.SESSION_GONE, self.session_gone, schemas.SessionRef),
        ]
        for op, handler, req_type in table:
            await self.bus.serve(subjects.service_request("voice", op), handler, req_type, queue=q)
        # One replica handles each announcement.
        await self.bus.subscribe(subjects.presence_events(), self.on_presence_event, queue=q)

    # -- commands ------------------------------------------------------------------------
    async def join(self, req: schemas.VoiceJoinRequest) -> schemas.VoiceJoinReply:
        try:
            access = await self.bus.request(
                subjects.service_request("messaging", MessagingOps.CHANNEL_ACCESS),
                schemas.ChannelAccess(user=req.user, channel_id=req.channel_id), schemas.ChannelReply)
            guild_id = rules.check_joinable(access.channel.kind, access.channel.guild_id)
        except ChatError as exc:
            JOIN_REJECTED.labels(exc.code).inc()
            raise
        new = VoiceRecord(user_id=req.user.id, name=req.user.name, channel_id=req.channel_id, guild_id=guild_id,
                          session_id=req.session_id, node=req.node, self_mute=req.self_mute,
                          self_deaf=req.self_deaf, joined_at=time.time())
        prev = await self._write(req.user.id, lambda _stored: new)
        JOINS.inc()
        for change in rules.join(prev, new):
            await self._emit(change)
        if prev is not None and prev.channel_id != new.channel_id:
            MOVES.inc()
            self.livekit.remove_participant_soon(prev.channel_id, prev.user_id)
        log.info("voice join", extra={"user_id": new.user_id, "channel_id": new.channel_id,
                                      "session_id": new.session_id, "moved": prev is not None})
        grant = schemas.LiveKitGrant(url=self.livekit.url, room=rules.room_name(new.channel_id),
                                     token=self.livekit.token(new.user_id, new.name, new.channel_id))
        return schemas.VoiceJoinReply(livekit=grant, voice_state=_state(new, True), keepalive_s=self.keepalive_s)

    async def update(self, req: schemas.VoiceUpdateRequest) -> schemas.VoiceStateReply:
        if req.keepalive:
            try:
                kept = await self._write(req.user.id, lambda s: rules.keepalive(s.record, req.session_id))
            except Conflict:
                KEEPALIVES.labels("gone").inc()
                raise
            KEEPALIVES.labels("ok").inc()
            return schemas.VoiceStateReply(voice_state=_state(rules.keepalive(kept, req.session_id), True))
        holder: dict[str, VoiceRecord] = {}

        def decide(stored: Stored) -> VoiceRecord:
            new = rules.update(stored.record, req.self_mute, req.self_deaf)
            holder["new"] = new
            return new

        prev = await self._write(req.user.id, decide)
        new = holder["new"]
        if prev is not None and rules.changed(prev, new):
            UPDATES.inc()
            await self._emit(StateChange(new, True))
        return schemas.VoiceStateReply(voice_state=_state(new, True))

    async def leave(self, req: schemas.VoiceLeaveRequest) -> schemas.VoiceLeaveReply:
        """Any session of the user may leave; not being in voice is fine (idempotent)."""
        left = await self._end(req.user.id, lambda rec: rec is not None, "leave", kick=True)
        return schemas.VoiceLeaveReply(left=left)

    async def session_gone(self, req: schemas.SessionRef) -> schemas.VoiceLeaveReply:
        """The session ended: the user leaves voice if that session is the one in voice."""
        left = await self._end(req.user_id, lambda rec: rules.owned_by(rec, req.session_id), "session_gone",
                               kick=True)
        return schemas.VoiceLeaveReply(left=left)

    async def participant_left(self, channel_id: str, user_id: str, event_at: float | None) -> bool:
        """LiveKit says the user left the channel's room (webhook)."""
        return await self._end(user_id, lambda rec: rules.left_room(rec, channel_id, event_at), "livekit",
                               kick=False)

    async def node_gone(self, node: str) -> int:
        """Every voice state of a gateway node that is gone."""
        count = 0
        for user_id in await self.store.users_on_node(node):
            if await self._end(user_id, lambda rec: rules.on_node(rec, node), "node_gone", kick=True):
                count += 1
        return count

    # -- presence announcements -------------------------------------------------------------
    async def on_presence_event(self, msg: Msg) -> None:
        try:
            gone = _sessions_gone_decoder.decode(msg.data)
        except msgspec.DecodeError:
            PRESENCE_EVENTS.labels("ignored").inc()  # another kind of presence announcement
            return
        try:
            if not gone.sessions:
                n = await self.node_gone(gone.node)
            else:
                n = 0
                for ref in gone.sessions:
                    if (await self.session_gone(ref)).left:
                        n += 1
            PRESENCE_EVENTS.labels("handled").inc()
            if n:
                log.info("voice states of a gone node cleaned", extra={"node": gone.node, "count": n})
        except ChatError as exc:
            # States not cleaned now expire with their TTL (no session refreshes them).
            PRESENCE_EVENTS.labels(exc.code).inc()
            log.warning("could not clean voice states of node %s: %s", gone.node, exc.code)

    # -- helpers -------------------------------------------------------------------------
    async def _write(self, user_id: str, decide: Callable[[Stored], VoiceRecord]) -> VoiceRecord | None:
        """Read, decide, compare-and-set; return the record that was replaced."""
        for _ in range(CAS_ATTEMPTS):
            stored = await self.store.get(user_id)
            new = decide(stored)
            if await self.store.put(stored, new):
                return stored.record
        CAS_EXHAUSTED.inc()
        raise Conflict("voice state changed concurrently; retry")

    async def _end(self, user_id: str, applies: Callable[[VoiceRecord | None], bool], cause: str,
                   *, kick: bool) -> bool:
        for _ in range(CAS_ATTEMPTS):
            stored = await self.store.get(user_id)
            if stored.record is None or not applies(stored.record):
                return False
            if await self.store.delete(stored):
                rec = stored.record
                LEAVES.labels(cause).inc()
                await self._emit(StateChange(rec, False))
                if kick:
                    self.livekit.remove_participant_soon(rec.channel_id, rec.user_id)
                log.info("voice leave (%s)", cause, extra={"user_id": rec.user_id, "channel_id": rec.channel_id,
                                                           "session_id": rec.session_id})
                return True
        CAS_EXHAUSTED.inc()
        raise Conflict("voice state changed concurrently; retry")

    async def _emit(self, change: StateChange) -> None:
        """State is committed before this runs: a failure here is counted, never raised."""
        try:
            await self.emitter.emit("voice:state", rules.state_payload(change.record, change.connected),
                                    room=channel_room(change.record.channel_id), namespace="/")
            EMITS.labels("true" if change.connected else "false").inc()
        except Exception:
            EMIT_FAILURES.inc()
            log.exception("could not queue voice:state", extra={"channel_id": change.record.channel_id})


def _state(rec: VoiceRecord, connected: bool) -> schemas.VoiceState:
    return schemas.VoiceState(channel_id=rec.channel_id, user_id=rec.user_id, self_mute=rec.self_mute,
                              self_deaf=rec.self_deaf, connected=connected)
