"""Presence process: its bus connection, queue-group handlers and ops endpoints."""

from __future__ import annotations

from contextlib import AsyncExitStack

from libs.service.runner import ProcessContext
from libs.service.standard import add_status_routes, register_ping


async def build(ctx: ProcessContext, stack: AsyncExitStack) -> None:
    bus = await ctx.start_bus(stack)
    await register_ping(ctx)
    ctx.drain_hooks.append(bus.unsubscribe_all)
    add_status_routes(ctx, lambda: {"nats": bus.health()})
