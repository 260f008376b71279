"""Gateway side of voice: ``voice:join``, ``voice:update``, ``voice:leave``, and the end
of a session's voice state when its socket goes.

The voice bridge owns the state; this node only remembers which of its sockets joined
voice, to refresh their state's TTL while they live and to report their end.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from prometheus_client import Counter, Gauge

from libs.bus import schemas
from libs.bus.subjects import VoiceOps
from libs.errors import ChatError, Conflict
from services.gateway.adapters.sessions import Session
from services.gateway.domain import payloads
from services.gateway.transport.socket_events import Ack, SocketGateway, ok

log = logging.getLogger(__name__)

SERVICE = "voice"
TICK_S = 5.0
KEEPALIVE_CONCURRENCY = 50

VOICE_SESSIONS = Gauge("chat_voice_gateway_sessions", "Sockets of this node that joined voice")
KEEPALIVE_FAILURES = Counter("chat_voice_gateway_keepalive_failures_total",
                             "Voice state refreshes that failed (retried next tick)", ["code"])
CLEANUP_FAILURES = Counter("chat_voice_gateway_cleanup_failures_total",
                           "Voice session ends that could not be reported (the state then expires)", ["code"])


class _Tracked:
    __slots__ = ("due", "every_s", "session")

    def __init__(self, session: Session, every_s: float) -> None:
        self.session = session
        self.every_s = every_s
        self.due = time.monotonic() + every_s


class VoiceEvents:
    def __init__(self, gw: SocketGateway) -> None:
        self.gw = gw
        self.tracked: dict[str, _Tracked] = {}  # sid -> a socket whose session holds (or held) voice
        self.attempted: set[str] = set()  # sids that sent voice:join (its answer may have been lost)
        self._keepalive: asyncio.Task[None] | None = None

    @property
    def node(self) -> str:
        return self.gw.bus.name

    @staticmethod
    def user(s: Session) -> schemas.UserRef:
        return schemas.UserRef(id=s.user_id, name=s.name)

    # -- client events -------------------------------------------------------------------
    async def join(self, s: Session, m: payloads.VoiceJoin) -> Ack:
        self.attempted.add(s.sid)
        reply = await self.gw.request(SERVICE, VoiceOps.JOIN, schemas.VoiceJoinRequest(
            user=self.user(s), session_id=s.session_id, node=self.node, channel_id=m.channel_id,
            self_mute=m.self_mute, self_deaf=m.self_deaf), schemas.VoiceJoinReply)
        if self.gw.sessions.get(s.sid) is None:
            # The socket went while the join was in flight: its disconnect hook may have run
            # before the state existed, so end it here.
            await self._session_gone(s)
        else:
            self.tracked[s.sid] = _Tracked(s, max(1.0, reply.keepalive_s))
            VOICE_SESSIONS.set(len(self.tracked))
            self._ensure_keepalive()
        return ok(livekit=msgspec.to_builtins(reply.livekit), voice_state=msgspec.to_builtins(reply.voice_state))

    async def update(self, s: Session, m: payloads.VoiceUpdate) -> Ack:
        reply = await self.gw.request(SERVICE, VoiceOps.UPDATE, schemas.VoiceUpdateRequest(
            user=self.user(s), session_id=s.session_id, self_mute=m.self_mute, self_deaf=m.self_deaf),
            schemas.VoiceStateReply)
        return ok(voice_state=msgspec.to_builtins(reply.voice_state))

    async def leave(self, s: Session, _m: payloads.Empty) -> Ack:
        await self.gw.request(SERVICE, VoiceOps.LEAVE,
                              schemas.VoiceLeaveRequest(user=self.user(s), session_id=s.session_id),
                              schemas.VoiceLeaveReply)
        self._untrack(s.sid)
        return ok()

    # -- end of a socket -----------------------------------------------------------------
    async def voice_session_gone(self, s: Session, _last: bool) -> None:
        """Disconnect hook: the session's voice state (if it still holds one) ends."""
        joined = s.sid in self.attempted or s.sid in self.tracked
        self._untrack(s.sid)
        if joined:
            await self._session_gone(s)

    async def _session_gone(self, s: Session) -> None:
        try:
            await self.gw.request(SERVICE, VoiceOps.SESSION_GONE,
                                  schemas.SessionRef(user_id=s.user_id, session_id=s.session_id),
                                  schemas.VoiceLeaveReply)
        except ChatError as exc:
            # No keepalive refreshes the state any more: it expires with its TTL.
            CLEANUP_FAILURES.labels(exc.code).inc()
            log.warning("could not end voice state of a closed session: %s", exc.code,
                        extra={"user_id": s.user_id, "session_id": s.session_id})

    def _untrack(self, sid: str) -> None:
        self.attempted.discard(sid)
        if self.tracked.pop(sid, None) is not None:
            VOICE_SESSIONS.set(len(self.tracked))

    # -- keepalive -----------------------------------------------------------------------
    def _ensure_keepalive(self) -> None:
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.create_task(self._keepalive_forever(), name="voice-keepalive")

    async def _keepalive_forever(self) -> None:
        gate = asyncio.Semaphore(KEEPALIVE_CONCURRENCY)
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            due = [t for t in list(self.tracked.values()) if t.due <= now]
            if due:
                await asyncio.gather(*(self._refresh(t, gate) for t in due))

    async def _refresh(self, t: _Tracked, gate: asyncio.Semaphore) -> None:
        s = t.session
        async with gate:
            try:
                await self.gw.request(SERVICE, VoiceOps.UPDATE, schemas.VoiceUpdateRequest(
                    user=self.user(s), session_id=s.session_id, keepalive=True), schemas.VoiceStateReply)
                t.due = time.monotonic() + t.every_s
            except Conflict:
                # Left, moved to another session, or ended by LiveKit: nothing to keep alive.
                self._untrack(s.sid)
            except ChatError as exc:
                KEEPALIVE_FAILURES.labels(exc.code).inc()
                t.due = time.monotonic() + TICK_S
            except Exception:
                KEEPALIVE_FAILURES.labels("internal").inc()
                log.exception("voice keepalive failed", extra={"session_id": s.session_id})
                t.due = time.monotonic() + t.every_s


def register(gw: SocketGateway) -> None:
    """Add the voice client events and the disconnect hook to gw."""
    voice = VoiceEvents(gw)
    gw.add_event("voice:join", payloads.VoiceJoin, voice.join, "voice")
    gw.add_event("voice:update", payloads.VoiceUpdate, voice.update, "voice")
    gw.add_event("voice:leave", payloads.Empty, voice.leave, "voice")
    gw.disconnect_hooks.append(voice.voice_session_gone)

