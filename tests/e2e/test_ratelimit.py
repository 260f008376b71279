"""The shared rate limiter against a real Redis: a bounded pool under a burst, the
library's own moving window through pipelines, and the per-node fallback when Redis is
unreachable."""

from __future__ import annotations

import asyncio
import time


async def test_shared_limiter_keeps_to_its_connections_under_a_burst(servers):
    """A burst of checks (a reconnect storm) shares a few Redis connections and the limit
    holds exactly: 300 concurrent hits against 100/minute, through at most 4 connections."""
    import redis.asyncio as aioredis

    from libs.errors import RateLimited
    from libs.ratelimit.limiter import RateLimiter

    prefix = f"rl-burst-{time.time_ns()}"
    limiter = RateLimiter({"send": "100/minute"}, servers.redis.url, timeout_s=5.0, key_prefix=prefix,
                          max_connections=4)
    peak = 0
    probe = aioredis.from_url(servers.redis.url)

    async def hit() -> bool:
        try:
            await limiter.hit("send", "u1")
            return True
        except RateLimited:
            return False

    async def watch() -> None:
        nonlocal peak
        while True:
            clients = await probe.client_list()
            peak = max(peak, sum(1 for c in clients if c.get("name") == prefix))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(hit() for _ in range(300)))
    finally:
        watcher.cancel()
        await limiter.close()
        await probe.aclose()
    assert results.count(True) == 100 and results.count(False) == 200
    assert 1 <= peak <= 4


async def test_batched_checks_are_the_librarys_moving_window(servers):
    """The pipelined checks run limits' own script on limits' own keys: the library sees
    their hits, and a Redis that lost its scripts (a restart) gets them again."""
    import redis.asyncio as aioredis
    from limits import parse

    from libs.ratelimit.limiter import RateLimiter

    prefix = f"rl-lib-{time.time_ns()}"
    limiter = RateLimiter({"send": "3/minute"}, servers.redis.url, key_prefix=prefix)
    assert limiter.shared is not None
    item = parse("3/minute")
    probe = aioredis.from_url(servers.redis.url)
    try:
        together = await asyncio.gather(*(limiter.shared.hit(item, "send", "u1") for _ in range(5)))
        assert sorted(together) == [False, False, True, True, True]
        assert not await limiter.shared.library.hit(item, "send", "u1")  # the library counts them
        assert (await limiter.shared.library.get_window_stats(item, "send", "u1")).remaining == 0
        assert await limiter.shared.library.hit(item, "send", "u2")
        await probe.script_flush()
        assert [await limiter.shared.hit(item, "send", "u2") for _ in range(3)] == [True, True, False]
    finally:
        await limiter.close()
        await probe.aclose()


async def test_unreachable_redis_fails_a_batch_at_once_and_the_local_limit_holds():
    from libs.errors import RateLimited
    from libs.ratelimit.limiter import FALLBACK, RateLimiter

    limiter = RateLimiter({"send": "2/minute"}, "redis://127.0.0.1:1", timeout_s=1.0)
    before = FALLBACK._value.get()
    try:
        results = []
        for _ in range(3):
            try:
                await limiter.hit("send", "u1")
                results.append(True)
            except RateLimited:
                results.append(False)
        assert results == [True, True, False]
        assert FALLBACK._value.get() - before == 3
    finally:
        await limiter.close()
