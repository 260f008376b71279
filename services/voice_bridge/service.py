"""Voice bridge process: voice state in Redis, the room emitter, LiveKit, the bus
handlers and the LiveKit webhook on the ops port."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from prometheus_client import Gauge

from libs.errors import ChatError
from libs.resilience.tasks import background
from libs.service.runner import ProcessContext
from libs.service.standard import add_status_routes, register_ping
from services.voice_bridge.adapters.livekit import LiveKit
from services.voice_bridge.adapters.state_store import VoiceStateStore
from services.voice_bridge.settings import VoiceBridgeSettings
from services.voice_bridge.transport import webhook
from services.voice_bridge.transport.bus_handlers import VoiceHandlers

log = logging.getLogger(__name__)

CONNECTED_USERS = Gauge("chat_voice_connected_users", "Users in a voice channel (whole cluster, sampled)")
SAMPLE_INTERVAL_S = 15.0


async def build(ctx: ProcessContext, stack: AsyncExitStack) -> None:
    s: VoiceBridgeSettings = ctx.settings
    store = VoiceStateStore(s.redis_url, ttl_s=s.voice_state_ttl_s, timeout_s=s.voice_redis_timeout_s,
                            breaker=ctx.breaker("redis"))
    stack.push_async_callback(store.close)

    emitter = ctx.start_emitter(stack)

    livekit = LiveKit(s.livekit_url, s.livekit_api_key, s.livekit_api_secret, breaker=ctx.breaker("livekit"),
                      timeout_s=s.livekit_timeout_s, token_ttl_s=s.livekit_token_ttl_s)
    await livekit.start()
    stack.push_async_callback(livekit.stop)

    bus = await ctx.start_bus(stack)
    handlers = VoiceHandlers(store, livekit, bus, emitter, keepalive_s=max(10.0, s.voice_state_ttl_s / 3))
    await handlers.register()
    await register_ping(ctx)
    webhook.install(ctx.ops.add_post, livekit, handlers)

    background(stack, _sample_sizes(store), "voice-sampler")

    ctx.drain_hooks.append(bus.unsubscribe_all)
    add_status_routes(ctx, lambda: {"nats": bus.health(), "redis": emitter.health(), "voice_store": store.health(),
                                    "livekit": livekit.health()})


async def _sample_sizes(store: VoiceStateStore) -> None:
    while True:
        try:
            CONNECTED_USERS.set(await store.count_active())
        except ChatError as exc:
            log.debug("voice size sample skipped: %s", exc.code)
        await asyncio.sleep(SAMPLE_INTERVAL_S)
