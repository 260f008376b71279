"""Moderation process: Postgres, the room emitter, gateway control and the bus handlers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from libs.service.runner import ProcessContext
from libs.service.standard import add_status_routes, register_ping
from services.moderation.adapters.gateways import GatewayFanout
from services.moderation.adapters.store import ModerationStore
from services.moderation.settings import ModerationSettings
from services.moderation.transport.bus_handlers import ModerationHandlers


async def build(ctx: ProcessContext, stack: AsyncExitStack) -> None:
    s: ModerationSettings = ctx.settings
    # Migrations run under an advisory lock, so whichever of messaging and moderation
    # starts first applies them and this one also works on its own.
    db = await ctx.start_database(stack, migrate=True)

    emitter = ctx.start_emitter(stack)

    bus = await ctx.start_bus(stack)
    fanout = GatewayFanout(bus, timeout_s=s.control_timeout_s, settle_s=s.control_settle_s)
    handlers = ModerationHandlers(ModerationStore(db), bus, emitter, fanout)
    await handlers.register()
    await register_ping(ctx)
    ctx.drain_hooks.append(bus.unsubscribe_all)
    add_status_routes(ctx, lambda: {"postgres": db.health(), "nats": bus.health(), "redis": emitter.health()})
