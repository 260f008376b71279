"""Gateway process: Socket.IO + HTTP on the public port, ops on its own port."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

import msgspec
from aiohttp import web

from libs.auth.tokens import TokenVerifier
from libs.bus import schemas, subjects
from libs.ratelimit.limiter import RateLimiter
from libs.resilience.tasks import background
from libs.service.runner import ProcessContext
from libs.sio import ws_server
from libs.sio.redis_manager import ResilientRedisManager
from services.gateway import metrics
from services.gateway.settings import GatewaySettings
from services.gateway.transport import mod_events, presence_events, voice_events
from services.gateway.transport.http_api import HttpApi
from services.gateway.transport.ops_routes import GatewayOps
from services.gateway.transport.sio_server import GatewayServer
from services.gateway.transport.socket_events import SocketGateway

log = logging.getLogger(__name__)
_control_decoder = msgspec.json.Decoder(schemas.GatewayControl)


async def build(ctx: ProcessContext, stack: AsyncExitStack) -> None:
    s: GatewaySettings = ctx.settings
    manager = ResilientRedisManager(s.redis_url, s.sio_channel, backoff=ctx.backoff(),
                                    breaker=ctx.breaker("redis"))
    origins: list[str] | str = list(s.allowed_origins) if s.allowed_origins else ("*" if s.dev_mode else [])
    holder: dict[str, SocketGateway] = {}
    sio = GatewayServer(
        async_mode="aiohttp", client_manager=manager, cors_allowed_origins=origins,
        ping_interval=s.ping_interval_s, ping_timeout=s.ping_timeout_s,
        max_http_buffer_size=s.max_frame_bytes, logger=False, engineio_logger=False,
        connect_timeout_s=s.connect_timeout_s, queue_soft=s.client_queue_soft, queue_hard=s.client_queue_hard,
        buffer_soft=s.client_buffer_soft_bytes, buffer_hard=s.client_buffer_hard_bytes,
        channels_of=lambda sid: sorted(getattr(holder["gw"].sessions.get(sid), "channels", ())),
    )
    bus = await ctx.start_bus(stack)
    verifier = TokenVerifier(audience=s.jwt_audience, issuer=s.jwt_issuer, secret=s.jwt_secret,
                             jwks_url=s.jwt_jwks_url, dev_mode=s.dev_mode, breaker=ctx.breaker("auth"))
    # A breaker of its own: checks that time out in an overloaded gateway (a reconnect storm)
    # must not stop room delivery through the adapter, which shared the "redis" breaker.
    limiter = RateLimiter(s.rate_rules(), s.redis_url, breaker=ctx.breaker("redis-ratelimit"),
                          ahead_fraction=s.ratelimit_ahead_fraction)
    limiter.start()
    stack.push_async_callback(limiter.close)
    gateway = SocketGateway(sio, manager, bus, verifier, limiter, node_id=ctx.node_id,
                            trusted_proxy_header=s.trusted_proxy_header, connect_concurrency=s.connect_concurrency)
    holder["gw"] = gateway
    manager.start()
    stack.push_async_callback(manager.stop)
    ctx.readiness.add_check("redis_listener", lambda: manager.listener_up)

    mod_events.register(gateway)
    voice_events.register(gateway)
    presence_events.register(gateway)
    for job in gateway.background:
        background(stack, job(), getattr(job, "__name__", "gateway-job"))

    async def on_control(msg) -> None:  # type: ignore[no-untyped-def]
        ok = True
        try:
            await gateway.apply_control(_control_decoder.decode(msg.data))
        except Exception:
            ok = False
            log.exception("bad gateway control message")
        if msg.reply:  # a service waiting for every node to have acted
            try:
                await msg.respond(b'{"ok":true,"node":"%s"}' % ctx.node_id.encode() if ok else b'{"ok":false}')
            except Exception:
                pass

    await bus.subscribe(subjects.gateway_broadcast(), on_control)
    await bus.subscribe(subjects.gateway_control(ctx.node_id), on_control)

    api = HttpApi(bus, verifier, dev_mode=s.dev_mode, jwt_secret=s.jwt_secret,
                  audience=s.jwt_audience, issuer=s.jwt_issuer)
    app = web.Application(middlewares=[api.middleware], client_max_size=s.max_frame_bytes)
    sio.attach(app)
    app.add_routes(api.routes())
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    assert runner.server is not None
    # Engine.IO WebSockets are served by the front itself; everything else goes to aiohttp.
    front = await ws_server.serve(sio.eio, runner.server, s.host, s.port, head_timeout_s=s.connect_timeout_s)

    async def close_front() -> None:
        front.close()
        ws_server.close_all(sio.eio)

    stack.push_async_callback(close_front)
    log.info("gateway listening on http://%s:%d (ops %d)", s.host, s.port, s.effective_ops_port)

    metrics.ROOMS.set_function(lambda: len(manager.rooms.get("/", {})))
    metrics.PENDING_READY.set_function(lambda: len(gateway._pending_ready))
    ops = GatewayOps(manager, bus, s.admin_token, lambda: len(gateway.sessions))
    ops.install(ctx.ops.add_get, ctx.ops.add_post)

    async def drain() -> None:
        """Tell every client to reconnect elsewhere, in staggered batches, then close."""
        sids = list(gateway.sessions.by_sid)
        log.info("draining %d sockets", len(sids))
        batch = max(1, s.drain_batch)
        for i in range(0, len(sids), batch):
            after_ms = (i // batch) * s.drain_batch_interval_ms
            for sid in sids[i:i + batch]:
                await sio.emit("reconnect", {"after_ms": after_ms}, to=sid)
        await asyncio.sleep(min(2.0, s.drain_grace_s / 4))
        for sid in list(gateway.sessions.by_sid):
            try:
                await sio.disconnect(sid)
            except Exception:
                pass
        await bus.unsubscribe_all()

    ctx.drain_hooks.append(drain)
