"""Presence process: Redis state, the room emitter, bus handlers and the sweepers
(typing expiry, dead gateway nodes, stale sessions)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import redis.asyncio as aioredis

from libs.resilience.tasks import background
from libs.service.runner import ProcessContext
from libs.service.standard import add_status_routes, register_ping
from services.presence.adapters.presence_store import PresenceStore
from services.presence.presence import PresenceService
from services.presence.settings import PresenceSettings
from services.presence.transport.bus_handlers import PresenceHandlers

log = logging.getLogger(__name__)


async def build(ctx: ProcessContext, stack: AsyncExitStack) -> None:
    s: PresenceSettings = ctx.settings
    # A blocking pool: under a burst, a handler waits for a connection (up to the Redis
    # timeout) instead of failing; 64 = the bus handlers' concurrency.
    pool = aioredis.BlockingConnectionPool.from_url(
        s.redis_url, max_connections=64, timeout=s.redis_timeout_s, socket_timeout=s.redis_timeout_s,
        socket_connect_timeout=s.redis_timeout_s, socket_keepalive=True, health_check_interval=10)
    redis = aioredis.Redis(connection_pool=pool)
    stack.push_async_callback(pool.disconnect)
    stack.push_async_callback(redis.aclose)
    breaker = ctx.breaker("redis")
    emitter = ctx.start_emitter(stack)
    bus = await ctx.start_bus(stack)
    presence = PresenceService(PresenceStore(redis, s.key_ttl_s), emitter, bus,
                               typing_ttl_s=s.typing_ttl_s, node_timeout_s=s.node_timeout_s,
                               offline_grace_s=s.offline_grace_s)
    handlers = PresenceHandlers(presence, bus, breaker, s.redis_timeout_s)
    await handlers.register()
    await register_ping(ctx)

    async def sweep_loop() -> None:
        while True:
            nxt = await guarded(handlers, presence.sweep_due)
            wait = s.typing_sweep_s
            if isinstance(nxt, float):
                wait = min(s.typing_sweep_s, max(0.05, nxt - time.time()))
            presence.sweep_wakeup.clear()
            presence.next_sweep_at = time.time() + wait
            try:
                await asyncio.wait_for(presence.sweep_wakeup.wait(), wait)
            except TimeoutError:
                pass

    async def every(interval: float, job: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval)
            await guarded(handlers, job)

    background(stack, sweep_loop(), "presence-sweep")
    background(stack, every(s.node_check_s, presence.check_nodes), "node-check")
    background(stack, every(s.stale_sweep_s, presence.sweep_stale), "stale-sweep")
    ctx.drain_hooks.append(bus.unsubscribe_all)
    add_status_routes(ctx, lambda: {"redis": emitter.health(), "nats": bus.health()})


async def guarded(handlers: PresenceHandlers, job: Callable[[], Awaitable[object]]) -> object:
    """Run a sweeper job; a Redis outage or a bug is logged, never fatal."""
    try:
        async with handlers.redis():
            return await job()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("presence job %s failed: %s", getattr(job, "__name__", job), exc)
        return None
