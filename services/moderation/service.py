"""Moderation process: Postgres, the room emitter, gateway control and the bus handlers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from libs.db.database import Database
from libs.service.runner import ProcessContext
from libs.service.standard import add_status_routes, register_ping
from libs.sio.redis_manager import ResilientRedisManager
from services.moderation.adapters.gateways import GatewayFanout
from services.moderation.adapters.store import ModerationStore
from services.moderation.settings import ModerationSettings
from services.moderation.transport.bus_handlers import ModerationHandlers


async def build(ctx: ProcessContext, stack: AsyncExitStack) -> None:
    s: ModerationSettings = ctx.settings
    # migrate=True: the migrations run under an advisory lock, so whichever service starts
    # first applies them and this one also works on its own.
    db = Database(s.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max,
                  acquire_timeout=s.db_acquire_timeout_s, statement_timeout_ms=s.db_statement_timeout_ms,
                  backoff=ctx.backoff(), breaker=ctx.breaker("postgres"), migrate=True)
    await db.start()
    stack.push_async_callback(db.close)
    ctx.readiness.add_check("postgres", lambda: db.pool is not None)

    emitter = ResilientRedisManager(s.redis_url, s.sio_channel, write_only=True,
                                    backoff=ctx.backoff(), breaker=ctx.breaker("redis"))
    emitter.start()
    stack.push_async_callback(emitter.stop)

    bus = await ctx.start_bus(stack)
    fanout = GatewayFanout(bus, timeout_s=s.control_timeout_s, settle_s=s.control_settle_s)
    handlers = ModerationHandlers(ModerationStore(db), bus, emitter, fanout)
    await handlers.register()
    await register_ping(ctx)
    ctx.drain_hooks.append(bus.unsubscribe_all)
    add_status_routes(ctx, lambda: {"postgres": db.health(), "nats": bus.health(), "redis": emitter.health()})
