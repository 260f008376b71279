"""The shared rate limiter against a real Redis: a bounded pool under a burst, the
library's own moving window through pipelines, hits admitted ahead of Redis (exact on one
node, within the limit across two), and the node's own window when Redis is unreachable
or goes away."""

from __future__ import annotations

import asyncio
import time

import pytest


async def test_shared_limiter_keeps_to_its_connections_under_a_burst(servers):
    """A burst of checks (a reconnect storm) shares a few Redis connections and the limit
    holds exactly: 300 concurrent hits against 100/minute, through at most 4 connections
    (one pipeline at a time: 100 checks in Redis, the other 200 refused by the node's own
    window)."""
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

    stop = asyncio.Event()

    async def watch() -> None:
        # Ends on `stop`, not by cancellation: redis-py can swallow a cancel that arrives
        # during a command, and the watcher then outlived the test.
        nonlocal peak
        while not stop.is_set():
            clients = await probe.client_list()
            peak = max(peak, sum(1 for c in clients if c.get("name") == prefix))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(hit() for _ in range(300)))
        clients = await probe.client_list()  # the pool keeps its connections until closed
        peak = max(peak, sum(1 for c in clients if c.get("name") == prefix))
    finally:
        stop.set()
        await watcher  # ended before its connection closes
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
    from libs.ratelimit.limiter import CHECKS, FALLBACK, RateLimiter

    limiter = RateLimiter({"send": "2/minute"}, "redis://127.0.0.1:1", timeout_s=1.0)
    before = FALLBACK._value.get()
    refused_by_node = CHECKS.labels("node")._value.get()
    try:
        results = []
        for _ in range(3):
            try:
                await limiter.hit("send", "u1")
                results.append(True)
            except RateLimited:
                results.append(False)
        assert results == [True, True, False]
        # two admitted by the node's window in Redis's place; the third refused by it outright
        assert FALLBACK._value.get() - before == 2
        assert CHECKS.labels("node")._value.get() - refused_by_node == 1
    finally:
        await limiter.close()


async def _admitted(limiter, n: int, key: str = "u1") -> list[bool]:
    from libs.errors import RateLimited

    out = []
    for _ in range(n):
        try:
            await limiter.hit("send", key)
            out.append(True)
        except RateLimited as exc:
            assert exc.extra["retry_after_ms"] > 0
            out.append(False)
    return out


def _checks() -> dict[str, float]:
    from libs.ratelimit.limiter import CHECKS

    return {p: CHECKS.labels(p)._value.get() for p in ("node", "ahead", "shared", "fallback")}


async def test_hits_far_below_the_limit_do_not_wait_for_redis_and_one_node_is_exact(servers):
    """A key's first check waits for Redis; then, up to half the limit, hits are admitted
    at once and recorded in the background; past half, every check waits for Redis. On one
    node the limit is exact, and Redis (the library's view) holds every admitted hit."""
    from limits import parse

    from libs.ratelimit.limiter import RateLimiter

    prefix = f"rl-ahead-{time.time_ns()}"
    limiter = RateLimiter({"send": "10/minute"}, servers.redis.url, key_prefix=prefix)
    assert limiter.shared is not None
    try:
        before = _checks()
        assert await _admitted(limiter, 12) == [True] * 10 + [False] * 2
        after = _checks()
        # 1 waiting (the key is new), 4 ahead (up to 5 = half of 10), 5 waiting; then the
        # node's own window (10 hits on this node) refuses without asking Redis
        assert {p: after[p] - before[p] for p in after} == {"node": 2, "ahead": 4, "shared": 6, "fallback": 0}
        # the waiting checks went to Redis after the hits admitted ahead: Redis has them all
        stats = await limiter.shared.get_window_stats(parse("10/minute"), "send", "u1")
        assert stats.remaining == 0
    finally:
        await limiter.close()


async def test_two_nodes_admitting_ahead_stay_within_the_limit(servers):
    """Two nodes (two limiters on one Redis), each admitting ahead up to half the limit:
    interleaved, in bursts or one after the other, the user gets the limit and no more."""
    from libs.ratelimit.limiter import RateLimiter

    prefix = f"rl-two-{time.time_ns()}"
    a = RateLimiter({"send": "20/minute"}, servers.redis.url, key_prefix=prefix)
    b = RateLimiter({"send": "20/minute"}, servers.redis.url, key_prefix=prefix)
    try:
        got = await _admitted(a, 1) + await _admitted(b, 1)  # both nodes know the key now
        for _ in range(5):  # alternating: each is ahead of what the other did since
            got += await _admitted(a, 3) + await _admitted(b, 3)
        assert got.count(True) == 20 and got[:20] == [True] * 20
        # a burst on both nodes at once, past the limit, under another key
        burst = await asyncio.gather(*(_admitted(n, 1, "u2") for n in (a, b) for _ in range(30)))
        assert sum(r.count(True) for r in burst) == 20
        for _ in range(3):
            burst = await asyncio.gather(*(_admitted(n, 4, "u2") for n in (a, b)))
            assert not any(any(r) for r in burst)
    finally:
        await a.close()
        await b.close()


async def test_a_stale_view_admits_at_most_half_the_limit_until_redis_answers(servers):
    """The bound of admitting ahead: node A last heard the key at 1 hit; node B then uses the
    rest of the limit. A burst on A is admitted ahead on A's stale view, at most half the
    limit in all, and once Redis's answers bring A the true count, A refuses."""
    from libs.ratelimit.limiter import RateLimiter

    prefix = f"rl-stale-{time.time_ns()}"
    a = RateLimiter({"send": "20/minute"}, servers.redis.url, key_prefix=prefix)
    b = RateLimiter({"send": "20/minute"}, servers.redis.url, key_prefix=prefix)
    try:
        assert await _admitted(a, 1) == [True]
        assert await _admitted(b, 19) == [True] * 19  # the limit is used up, A does not know it
        burst = await asyncio.gather(*(_admitted(a, 1) for _ in range(12)))
        assert 1 <= sum(r.count(True) for r in burst) <= 9  # A's view: 1 + 9 = half the limit
        assert await _admitted(a, 3) == [False] * 3
        assert await _admitted(b, 1) == [False]
    finally:
        await a.close()
        await b.close()


async def test_redis_going_away_under_hits_admitted_ahead(tmp_path):
    """Hits admitted ahead that Redis never records are counted and reported to the
    breaker; the node's window keeps the limit; once Redis is back, checks wait for it again."""
    from libs.ratelimit.limiter import UNRECORDED, RateLimiter
    from libs.resilience.breaker import CircuitBreaker
    from libs.servers.processes import RedisServer

    redis = RedisServer(tmp_path / "redis").start()
    limiter = RateLimiter({"send": "10/minute"}, redis.url, timeout_s=0.5,
                          breaker=CircuitBreaker("rl-test", failures=2, open_s=0.2))
    try:
        assert await _admitted(limiter, 2) == [True, True]  # waiting, then ahead
        # a check that waits (a new key) is answered after the hit admitted ahead is recorded
        assert await _admitted(limiter, 1, "u0") == [True]
        redis.pause()
        lost = UNRECORDED._value.get()
        before = _checks()
        got = await _admitted(limiter, 10)
        assert got == [True] * 8 + [False] * 2  # 10 on this node in all: its own window holds
        after = {p: v - before[p] for p, v in _checks().items()}
        assert after["ahead"] >= 1 and after["fallback"] >= 1 and after["node"] == 2
        deadline = time.monotonic() + 10  # the pipeline in flight fails at its socket timeout (1 s)
        while UNRECORDED._value.get() - lost < after["ahead"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert UNRECORDED._value.get() - lost == after["ahead"]
        redis.resume()
        await asyncio.sleep(0.3)  # the breaker half-opens
        before = _checks()
        assert await _admitted(limiter, 3, "u2") == [True] * 3
        assert _checks()["shared"] - before["shared"] >= 1
    finally:
        redis.resume()
        await limiter.close()
        redis.stop()


async def test_views_of_idle_keys_are_forgotten(servers):
    """A node's view of a key goes once the key has been idle for a whole window (checked at
    most once per sweep interval, when a new key comes), so the views stay as many as the
    keys in use."""
    from libs.ratelimit.limiter import RateLimiter

    limiter = RateLimiter({"send": "10/second"}, servers.redis.url, key_prefix=f"rl-sweep-{time.time_ns()}")
    assert limiter.shared is not None
    limiter.shared._sweep_s, limiter.shared._next_sweep = 0.2, 0.0
    try:
        assert await _admitted(limiter, 3, "u1") == [True] * 3
        assert len(limiter.shared.views) == 1
        await asyncio.sleep(1.3)  # u1 idle for more than its window
        assert await _admitted(limiter, 1, "u2") == [True]
        assert [k.split("/")[2] for k in limiter.shared.views] == ["u2"]
    finally:
        await limiter.close()


@pytest.mark.parametrize("fraction", [0.0])
async def test_ahead_admission_can_be_turned_off(servers, fraction):
    from libs.ratelimit.limiter import RateLimiter

    limiter = RateLimiter({"send": "10/minute"}, servers.redis.url, key_prefix=f"rl-off-{time.time_ns()}",
                          ahead_fraction=fraction)
    try:
        before = _checks()
        assert await _admitted(limiter, 11) == [True] * 10 + [False]
        after = {p: v - before[p] for p, v in _checks().items()}
        assert after == {"node": 1, "ahead": 0, "shared": 10, "fallback": 0}
    finally:
        await limiter.close()
