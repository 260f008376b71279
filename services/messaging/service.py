"""Messaging process: Postgres, the outbox, the room emitter and the bus handlers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from libs.service.runner import ProcessContext
from libs.service.standard import add_status_routes, register_ping
from services.messaging.adapters.guild_store import GuildStore
from services.messaging.adapters.outbox import OutboxPublisher
from services.messaging.adapters.store import Store
from services.messaging.settings import MessagingSettings
from services.messaging.transport.bus_handlers import MessagingHandlers


async def build(ctx: ProcessContext, stack: AsyncExitStack) -> None:
    s: MessagingSettings = ctx.settings
    db = await ctx.start_database(stack)

    emitter = ctx.start_emitter(stack)

    bus = await ctx.start_bus(stack)
    outbox = OutboxPublisher(db, bus, ctx.backoff(), linger_s=s.outbox_linger_ms / 1000)
    outbox.start()
    stack.push_async_callback(outbox.stop)

    store = Store(db, send_batch_max=s.send_batch_max, send_batches_inflight=s.send_batches_inflight)
    handlers = MessagingHandlers(store, GuildStore(db), bus, emitter, outbox, sync_page_size=s.sync_page_size,
                                 reply_max_bytes=s.reply_max_bytes)
    await handlers.register()
    await register_ping(ctx)
    ctx.drain_hooks.append(bus.unsubscribe_all)
    add_status_routes(ctx, lambda: {"postgres": db.health(), "nats": bus.health(), "redis": emitter.health()})
