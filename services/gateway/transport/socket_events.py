"""Socket.IO transport: connect, disconnect and the one wrapper every client event
goes through: decode -> validate -> authorise -> rate-limit -> call -> ack.

Every event gets exactly one ack of the contract's shape, whatever it carried; no
exception escapes. Domain work is done by the services behind the bus.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import msgspec
import socketio
from opentelemetry import context as otel_context
from opentelemetry import trace

from libs.auth.tokens import TokenVerifier
from libs.batching.group_commit import GroupCommit
from libs.bus import schemas, subjects
from libs.bus.client import Bus
from libs.bus.subjects import MessagingOps
from libs.errors import ChatError, Internal, Invalid, Unauthorized, Unavailable
from libs.observability import tracing
from libs.observability.logging import session_id_var, user_id_var
from libs.ratelimit.limiter import RateLimiter
from libs.sio.redis_manager import ResilientRedisManager, channel_room, guild_room, user_room
from services.gateway import metrics
from services.gateway.adapters.sessions import Session, SessionRegistry
from services.gateway.domain import payloads as p

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

Ack = dict[str, Any]
EventHandler = Callable[[Session, Any], Awaitable[Ack]]
# Runs after a socket is gone; ``last`` is True when it was the user's last socket on this node.
DisconnectHook = Callable[[Session, bool], Awaitable[None]]
# Runs during connect once the user is known; raises a ChatError (e.g. Banned) to refuse.
ConnectCheck = Callable[[schemas.UserRef, str], Awaitable[None]]
READY_BATCH_MAX = 64  # users in one `ready` request to messaging
SYNC_BATCH_MAX = 64  # calls in one `sync` request to messaging
# Every batcher of the gateway (`ready`, `sync`, presence opens and closes) keeps one batch in
# flight, and a spare: the second starts only once the batch before it has run
# BATCH_SPARE_AFTER_S (a paused replica, a lost request), so a burst goes in as few batches as
# one slot allows. What arrives meanwhile waits for the next batch.
BATCHES_INFLIGHT = 2
BATCH_SPARE_AFTER_S = 0.1
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class EventSpec:
    schema: type
    handler: EventHandler
    rule: str  # rate-limit rule (GatewaySettings.rate_*)


def ok(**data: Any) -> Ack:
    return {"ok": True, **data}


def err(exc: ChatError) -> Ack:
    return {"ok": False, "error": exc.to_dict()}


async def _in_batches(items: list[T], one: Callable[[T], Awaitable[R]],
                      many: Callable[[list[T]], Awaitable[list[R]]]) -> list[R]:
    """The answers to a batch of calls to a service: alone, a call goes as itself (``one``);
    together, as one request (``many``), asked again for the calls after the last one
    answered while a reply too big for the bus carries only the first ones."""
    if len(items) == 1:
        return [await one(items[0])]
    answers: list[R] = []
    while len(answers) < len(items):
        part = await many(items[len(answers):])
        if not part:
            raise Internal("a batch request was answered for none of its calls")
        answers.extend(part)
    return answers


def client_ip(environ: dict[str, Any], trusted_header: str) -> str:
    if trusted_header:
        key = "HTTP_" + trusted_header.upper().replace("-", "_")
        value = environ.get(key)
        if value:
            return str(value).split(",")[0].strip()
    req = environ.get("aiohttp.request")
    if req is not None and req.transport is not None:
        peer = req.transport.get_extra_info("peername")
        if peer:
            return str(peer[0])
    return str(environ.get("REMOTE_ADDR", "unknown"))


class SocketGateway:
    """Connection lifecycle and event dispatch for one gateway node."""

    def __init__(self, sio: socketio.AsyncServer, manager: ResilientRedisManager, bus: Bus,
                 verifier: TokenVerifier, limiter: RateLimiter, *, node_id: str = "gateway",
                 trusted_proxy_header: str = "",
                 message_max_chars: int = 2000, connect_concurrency: int = 64) -> None:
        self.sio = sio
        self.manager = manager
        self.bus = bus
        self.verifier = verifier
        self.limiter = limiter
        self.node_id = node_id
        self.trusted_proxy_header = trusted_proxy_header
        self.message_max_chars = message_max_chars
        self.sessions = SessionRegistry()
        # Admission: a reconnect storm sends every client's `ready` at once; past this many in
        # flight, requests would queue in messaging until they time out (and trip its breaker),
        # and each timed-out one is a client that retries. Here they wait their turn instead.
        self._admission = asyncio.Semaphore(max(1, connect_concurrency))
        self._pending_ready: dict[str, Ack] = {}
        # A connect burst asks messaging for `ready` one request (and one statement) per
        # batch of users instead of one per user; alone, a connect is sent at once.
        self._readies: GroupCommit[schemas.UserRef, schemas.ReadyReply] = GroupCommit(
            self._ready_batch, name="ready", max_batch=READY_BATCH_MAX, max_inflight=BATCHES_INFLIGHT,
            spare_after_s=BATCH_SPARE_AFTER_S)
        # The same for `sync`: a reconnect storm's clients all ask for what they missed.
        self._syncs: GroupCommit[schemas.SyncRequest, dict[str, Any]] = GroupCommit(
            self._sync_batch, name="sync", max_batch=SYNC_BATCH_MAX, max_inflight=BATCHES_INFLIGHT,
            spare_after_s=BATCH_SPARE_AFTER_S)
        self.events: dict[str, EventSpec] = {}
        self.disconnect_hooks: list[DisconnectHook] = []
        self.connect_checks: list[ConnectCheck] = []
        # Extra GatewayControl ops a feature handles itself (op -> handler).
        self.control_ops: dict[str, Callable[[schemas.GatewayControl], Awaitable[None]]] = {}
        # Long-running jobs of features (started and cancelled with the process).
        self.background: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self.connect_hooks: list[Callable[[Session, schemas.ReadyReply, dict[str, Any]], Awaitable[None]]] = []
        self._register_events()
        sio.on("connect", self.on_connect)
        sio.on("disconnect", self.on_disconnect)
        sio.on("*", self.on_event)
        manager.on_connect = self._send_ready

    # -- event table -----------------------------------------------------------------------
    def _register_events(self) -> None:
        self.events = {
            "message:send": EventSpec(p.MessageSend, self.message_send, "message_send"),
            "message:edit": EventSpec(p.MessageEdit, self.message_edit, "message_edit"),
            "message:delete": EventSpec(p.MessageDelete, self.message_delete, "message_delete"),
            "dm:send": EventSpec(p.DmSend, self.dm_send, "dm"),
            "channel:join": EventSpec(p.ChannelRef, self.channel_join, "channel"),
            "channel:leave": EventSpec(p.ChannelRef, self.channel_leave, "channel"),
            "sync": EventSpec(p.Sync, self.sync, "sync"),
        }

    def add_event(self, name: str, schema: type, handler: EventHandler, rule: str) -> None:
        self.events[name] = EventSpec(schema, handler, rule)

    async def request(self, service: str, op: str, payload: Any, reply_type: type) -> Any:
        return await self.bus.request(subjects.service_request(service, op), payload, reply_type)

    # -- connect / disconnect ----------------------------------------------------------------
    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        started = time.perf_counter()
        ip = client_ip(environ, self.trusted_proxy_header)
        with tracing.span(_tracer, "socket.connect", context=otel_context.Context()):
            try:
                await self.limiter.hit("connect", ip)
                token = auth.get("token") if isinstance(auth, dict) else None
                ident = await self.verifier.verify(token)
                user = schemas.UserRef(id=ident.user_id, name=ident.name)
                user_id_var.set(user.id)
            except Exception as exc:
                self._refuse(exc, ip)
            metrics.CONNECTS_WAITING.inc()
            try:
                await self._admission.acquire()
            finally:
                metrics.CONNECTS_WAITING.dec()
            try:
                return await self._open_session(sid, user, ip, started)
            finally:
                self._admission.release()

    async def _ready_batch(self, users: list[schemas.UserRef]) -> list[schemas.ReadyReply]:
        async def one(user: schemas.UserRef) -> schemas.ReadyReply:
            return await self.request("messaging", MessagingOps.READY, schemas.ReadyRequest(user=user),
                                      schemas.ReadyReply)

        async def many(rest: list[schemas.UserRef]) -> list[schemas.ReadyReply]:
            return (await self.request("messaging", MessagingOps.READY_MANY, schemas.ReadyMany(users=rest),
                                       schemas.ReadyManyReply)).replies

        return await _in_batches(users, one, many)

    async def _sync_batch(self, calls: list[schemas.SyncRequest]) -> list[dict[str, Any]]:
        async def one(call: schemas.SyncRequest) -> dict[str, Any]:
            return await self.request("messaging", MessagingOps.SYNC, call, dict)

        async def many(rest: list[schemas.SyncRequest]) -> list[dict[str, Any]]:
            reply = await self.request("messaging", MessagingOps.SYNC_MANY, schemas.SyncMany(calls=rest), dict)
            return list(reply.get("replies") or [])

        return await _in_batches(calls, one, many)

    def _refuse(self, exc: BaseException, ip: str) -> NoReturn:
        if isinstance(exc, ChatError):
            metrics.CONNECTIONS_FAILED.labels(exc.code).inc()
            log.info("connect refused: %s", exc.code, extra={"ip": ip})
            raise socketio.exceptions.ConnectionRefusedError(exc.code, exc.to_dict()) from None
        metrics.CONNECTIONS_FAILED.labels("internal").inc()
        log.error("connect failed", exc_info=exc)
        raise socketio.exceptions.ConnectionRefusedError(
            "internal", {"code": "internal", "message": "internal error"}) from None

    async def _open_session(self, sid: str, user: schemas.UserRef, ip: str, started: float) -> bool:
        """The part of a connect that runs under admission: checks, `ready` from messaging,
        rooms, the session, the connect hooks (presence)."""
        try:
            for check in self.connect_checks:
                await check(user, ip)
            ready = await self._readies.submit(user)
        except Exception as exc:
            self._refuse(exc, ip)
        session = Session(sid=sid, user_id=user.id, name=user.name,
                          session_id=secrets.token_hex(8), ip=ip)
        session_id_var.set(session.session_id)
        for ch in ready.channels:
            await self.sio.enter_room(sid, channel_room(ch.id))
            session.channels.add(ch.id)
        for g in ready.guilds:
            await self.sio.enter_room(sid, guild_room(g.id))
            session.guilds.add(g.id)
        session.friends = frozenset(ready.friend_ids)
        session.presence_guilds = frozenset(ready.presence_guild_ids)
        await self.sio.enter_room(sid, user_room(user.id))
        self.sessions.add(session)
        self._pending_ready[sid] = {
            "session_id": session.session_id,
            "user": {"id": user.id, "name": user.name},
            "guilds": msgspec.to_builtins(ready.guilds),
            "channels": msgspec.to_builtins(ready.channels),
            "presences": [],
            "limits": {"message_max_chars": self.message_max_chars},
        }
        for hook in self.connect_hooks:
            try:
                await hook(session, ready, self._pending_ready[sid])
            except Exception:
                log.exception("connect hook failed")
        metrics.CONNECTIONS_TOTAL.inc()
        metrics.CONNECTIONS_ACTIVE.set(len(self.sessions))
        took = time.perf_counter() - started
        metrics.CONNECT_SECONDS.observe(took)
        # The normal path of every connection is counted and timed; its line is for debugging
        # (25 µs a line: a twentieth of a connect's CPU here). Refusals and failures log at info.
        log.debug("connected in %.0f ms", took * 1000, extra={"sid": sid, "ip": ip, "channels": len(session.channels)})
        return True

    async def _send_ready(self, sid: str) -> None:
        payload = self._pending_ready.pop(sid, None)
        if payload is not None:
            await self.sio.emit("ready", payload, to=sid)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        try:
            self._pending_ready.pop(sid, None)
            session = self.sessions.remove(sid)
            metrics.CONNECTIONS_ACTIVE.set(len(self.sessions))
            metrics.DISCONNECTS.labels(str(reason or "unknown")).inc()
            if session is None:
                return
            metrics.CLEANUP_OPS.labels("rooms").inc(len(session.channels) + 1)
            log.debug("disconnected (%s)", reason, extra={"sid": sid, "user_id": session.user_id,
                                                          "session_id": session.session_id})
            last = not self.sessions.sids_of(session.user_id)
            for hook in self.disconnect_hooks:
                try:
                    await hook(session, last)
                    metrics.CLEANUP_OPS.labels(getattr(hook, "__name__", "hook")).inc()
                except Exception:
                    log.exception("disconnect cleanup hook failed", extra={"sid": sid})
        except Exception:
            log.exception("disconnect cleanup failed", extra={"sid": sid})

    # -- the wrapper ---------------------------------------------------------------------
    async def on_event(self, event: Any, sid: str, *args: Any) -> Ack:
        name = event if isinstance(event, str) and len(event) <= 64 else "<invalid>"
        spec = self.events.get(name)
        label = name if spec is not None else "<unknown>"
        started = time.perf_counter()
        # Each event is its own trace (not a child of whatever the connection's task carried).
        with tracing.span(_tracer, f"socket.event {label}", context=otel_context.Context()) as span:
            try:
                session = self.sessions.get(sid)
                if session is None:
                    raise Unauthorized("session ended")
                user_id_var.set(session.user_id)
                session_id_var.set(session.session_id)
                if spec is None:
                    await self.limiter.hit("invalid", session.user_id)
                    raise Invalid(f"unknown event {name!r}")
                if len(args) != 1:
                    raise Invalid("payload: exactly one object argument is expected")
                try:
                    msgspec.json.encode(args[0])  # only what can travel on: no lone surrogates
                    payload: Any = msgspec.convert(args[0], spec.schema)
                except msgspec.ValidationError as exc:
                    raise Invalid(p.describe_error(exc)) from None
                except (UnicodeError, TypeError, ValueError, OverflowError):
                    raise Invalid("payload: not valid JSON text (e.g. a lone surrogate)") from None
                await self.limiter.hit(spec.rule, session.user_id)
                ack = await spec.handler(session, payload)
                metrics.EVENTS_PROCESSED.labels(label).inc()
                return ack
            except ChatError as exc:
                span.set_attribute("chat.error_code", exc.code)
                metrics.EVENTS_REJECTED.labels(label, exc.code).inc()
                if exc.code == "rate_limited":
                    metrics.RATE_LIMITED.labels(label).inc()
                if label in ("message:send", "dm:send"):
                    metrics.MESSAGES_REJECTED.labels(exc.code).inc()
                if exc.code not in ("invalid", "rate_limited", "not_found", "forbidden"):
                    log.info("event %s answered %s: %s", label, exc.code, exc.message, extra={"sid": sid})
                return err(exc)
            except asyncio.CancelledError:
                metrics.EVENTS_REJECTED.labels(label, "unavailable").inc()
                return err(Unavailable("server is shutting down"))
            except Exception:
                metrics.EVENTS_REJECTED.labels(label, "internal").inc()
                log.exception("event %s failed", label, extra={"sid": sid})
                return err(Internal("internal error"))
            finally:
                metrics.EVENT_SECONDS.labels(label).observe(time.perf_counter() - started)

    # -- handlers ------------------------------------------------------------------------
    async def message_send(self, s: Session, m: p.MessageSend) -> Ack:
        req = schemas.SendMessage(
            user=schemas.UserRef(id=s.user_id, name=s.name), channel_id=m.channel_id, content=m.content,
            nonce=m.nonce,
            attachments=[schemas.Attachment(filename=a.filename, size=a.size, content_type=a.content_type, url=a.url)
                         for a in m.attachments],
            embeds=[schemas.Embed(title=e.title, description=e.description, url=e.url) for e in m.embeds],
            mentions=list(m.mentions), reply_to=m.reply_to)
        reply = await self.request("messaging", MessagingOps.SEND, req, schemas.MessageReply)
        metrics.MESSAGES_SENT.inc()
        return ok(message=msgspec.to_builtins(reply.message))

    async def message_edit(self, s: Session, m: p.MessageEdit) -> Ack:
        reply = await self.request("messaging", MessagingOps.EDIT, schemas.EditMessage(
            user=self.user(s), channel_id=m.channel_id, message_id=m.message_id, content=m.content),
            schemas.MessageReply)
        return ok(message=msgspec.to_builtins(reply.message))

    async def message_delete(self, s: Session, m: p.MessageDelete) -> Ack:
        await self.request("messaging", MessagingOps.DELETE, schemas.DeleteMessage(
            user=self.user(s), channel_id=m.channel_id, message_id=m.message_id), schemas.DeleteReply)
        return ok()

    async def dm_send(self, s: Session, m: p.DmSend) -> Ack:
        reply = await self.request("messaging", MessagingOps.DM_SEND, schemas.DmSend(
            user=self.user(s), recipient_id=m.recipient_id, content=m.content, nonce=m.nonce), schemas.DmReply)
        metrics.MESSAGES_SENT.inc()
        return ok(channel_id=reply.channel_id, message=msgspec.to_builtins(reply.message))

    async def sync(self, s: Session, m: p.Sync) -> Ack:
        reply = await self._syncs.submit(schemas.SyncRequest(user=self.user(s), channels=dict(m.channels)))
        return ok(channels=reply["channels"])

    @staticmethod
    def user(s: Session) -> schemas.UserRef:
        return schemas.UserRef(id=s.user_id, name=s.name)

    async def channel_join(self, s: Session, m: p.ChannelRef) -> Ack:
        reply = await self.request("messaging", MessagingOps.CHANNEL_ACCESS,
                                   schemas.ChannelAccess(user=schemas.UserRef(id=s.user_id, name=s.name),
                                                         channel_id=m.channel_id), schemas.ChannelReply)
        await self.sio.enter_room(s.sid, channel_room(m.channel_id))
        s.channels.add(m.channel_id)
        return ok(channel=msgspec.to_builtins(reply.channel))

    async def channel_leave(self, s: Session, m: p.ChannelRef) -> Ack:
        if m.channel_id in s.channels:
            await self.sio.leave_room(s.sid, channel_room(m.channel_id))
            s.channels.discard(m.channel_id)
        return ok()

    # -- control from services -------------------------------------------------------------
    async def apply_control(self, ctl: schemas.GatewayControl) -> None:
        handler = self.control_ops.get(ctl.op)
        if handler is not None:
            await handler(ctl)
            return
        for user_id in ctl.user_ids:
            for sid in self.sessions.sids_of(user_id):
                s = self.sessions.get(sid)
                if s is None:
                    continue
                if ctl.op == "join":
                    for cid in ctl.channel_ids:
                        if cid not in s.channels:
                            await self.sio.enter_room(sid, channel_room(cid))
                            s.channels.add(cid)
                    for gid in ctl.guild_ids:
                        await self.sio.enter_room(sid, guild_room(gid))
                        s.guilds.add(gid)
                elif ctl.op == "leave":
                    for cid in ctl.channel_ids:
                        if cid in s.channels:
                            await self.sio.leave_room(sid, channel_room(cid))
                            s.channels.discard(cid)
                    for gid in ctl.guild_ids:
                        await self.sio.leave_room(sid, guild_room(gid))
                        s.guilds.discard(gid)
                elif ctl.op == "disconnect":
                    await self.sio.disconnect(sid)
