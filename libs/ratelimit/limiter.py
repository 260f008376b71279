"""Distributed rate limits (the ``limits`` library) shared by every gateway node
through Redis, with a per-node in-memory fallback while Redis is away.

Each rule is a ``limits`` string ("30/minute", "10/10 seconds"). Redis calls run under
a short timeout and a breaker; when either trips, the same rule is enforced by the
local limiter, so a Redis outage loosens limits by at most the number of nodes and
never stops traffic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping

import redis.asyncio as aioredis
import redis.exceptions
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.util import WindowStats
from prometheus_client import Counter, Histogram

from libs.batching.group_commit import GroupCommit
from libs.errors import RateLimited, Unavailable
from libs.resilience.backoff import Backoff
from libs.resilience.breaker import CircuitBreaker

log = logging.getLogger(__name__)

REJECTED = Counter("chat_ratelimit_rejected_total", "Requests refused by a rate limit", ["rule"])
FALLBACK = Counter("chat_ratelimit_fallback_total", "Rate-limit checks answered by the per-node limiter")
BATCH = Histogram("chat_ratelimit_batch_size", "Rate-limit checks sent to Redis in one pipeline", ["batch"],
                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))


class SharedMovingWindow:
    """``limits``' moving window in Redis (its own acquire script, its keys), with the
    checks that arrive while earlier ones are in flight sent together in one pipeline.

    One check at a time through ``MovingWindowRateLimiter.hit`` cost a gateway about
    180 µs of CPU in redis-py (a pool checkout, a command, a reply), a seventh of its
    CPU at 1,000 messages/s. Alone, a check still goes at once; under load they share a
    round trip. The results are the library's: same script, same keys, so the library's
    own ``MovingWindowRateLimiter`` (``self.library``, which answers ``get_window_stats``)
    sees these hits.
    """

    def __init__(self, storage: RedisStorage, pool: aioredis.BlockingConnectionPool, *,
                 max_batch: int = 256, max_inflight: int = 2) -> None:
        self.library = MovingWindowRateLimiter(storage)
        self.bridge = storage.bridge
        self.redis = aioredis.Redis(connection_pool=pool)
        self.script = self.redis.register_script(self.bridge.SCRIPT_ACQUIRE_MOVING_WINDOW)
        self.batches: GroupCommit[tuple[str, int, int], bool] = GroupCommit(
            self._acquire, name="shared", max_batch=max_batch, max_inflight=max_inflight, size_metric=BATCH)

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        key = self.bridge.prefixed_key(item.key_for(*identifiers))
        return await self.batches.submit((key, item.amount, item.get_expiry()))

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        return await self.library.get_window_stats(item, *identifiers)

    async def _acquire(self, batch: list[tuple[str, int, int]]) -> list[bool]:
        try:
            try:
                return await self._pipeline(batch)
            except redis.exceptions.NoScriptError:
                await self.redis.script_load(self.script.script)  # Redis restarted: scripts are gone
                return await self._pipeline(batch)
        except (redis.exceptions.RedisError, OSError) as exc:
            # Unavailable fails the whole batch at once (no retry one check at a time).
            raise Unavailable(f"rate-limit store unavailable ({type(exc).__name__})") from None

    async def _pipeline(self, batch: list[tuple[str, int, int]]) -> list[bool]:
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for key, limit, expiry in batch:
            pipe.evalsha(self.script.sha, 1, key, now, limit, expiry, 1)  # type: ignore[no-untyped-call]
        return [bool(acquired) for acquired in await pipe.execute()]


class LocalMovingWindow:
    """The per-node fallback: the same moving window as the shared limiter, in memory.

    Not ``limits``' own in-memory storage: its asyncio version re-scans every key after
    each hit and hands each key to a worker thread, which under load (exactly when the
    fallback is in use: Redis slow or away) cost a tenth of a gateway's CPU. Here a key's
    old hits are dropped when it is hit, and keys idle for a whole window are dropped at
    most once per ``sweep_s``.
    """

    def __init__(self, sweep_s: float = 10.0) -> None:
        self._hits: dict[str, deque[float]] = {}
        self._expiry: dict[str, float] = {}
        self._sweep_s = sweep_s
        self._next_sweep = time.monotonic() + sweep_s

    def _window(self, item: RateLimitItem, identifiers: tuple[str, ...], now: float) -> deque[float]:
        key = item.key_for(*identifiers)
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
            self._expiry[key] = item.get_expiry()
        start = now - item.get_expiry()
        while hits and hits[0] <= start:
            hits.popleft()
        return hits

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._sweep_s
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self._expiry[k]]:
            del self._hits[key], self._expiry[key]

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        hits = self._window(item, identifiers, now)
        if len(hits) >= item.amount:
            return False
        hits.append(now)
        return True

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        now = time.monotonic()
        hits = self._window(item, identifiers, now)
        reset = (hits[0] if hits else now) + item.get_expiry()
        return WindowStats(time.time() + (reset - now), max(0, item.amount - len(hits)))

    def __len__(self) -> int:
        return len(self._hits)


class RateLimiter:
    def __init__(self, rules: Mapping[str, str], redis_url: str | None, *,
                 breaker: CircuitBreaker | None = None, timeout_s: float = 0.25,
                 key_prefix: str = "chat-rl", max_connections: int = 16) -> None:
        self.rules: dict[str, RateLimitItem] = {name: parse(spec) for name, spec in rules.items()}
        self.breaker = breaker or CircuitBreaker("redis-ratelimit")
        self.timeout_s = timeout_s
        self.local = LocalMovingWindow()
        self.shared: SharedMovingWindow | None = None
        self.pool: aioredis.BlockingConnectionPool | None = None
        if redis_url:
            # A bounded pool: a burst of checks (a reconnect storm) waits for one of
            # ``max_connections`` connections instead of opening one per check in flight.
            # An unbounded pool opened thousands, each with its own handshake, and a check
            # cut off by the timeout threw its connection away, so the next burst opened more.
            plain = redis_url.removeprefix("async+")
            self.pool = aioredis.BlockingConnectionPool.from_url(
                plain, max_connections=max_connections, timeout=timeout_s, socket_connect_timeout=1,
                socket_timeout=1, socket_keepalive=True, health_check_interval=10, client_name=key_prefix)
            storage = RedisStorage("async+" + plain, implementation="redispy", key_prefix=key_prefix,
                                   connection_pool=self.pool,  # type: ignore[arg-type]  # passed on to redis-py
                                   wrap_exceptions=True)
            self.shared = SharedMovingWindow(storage, self.pool)

        self._prober: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Probe Redis while the breaker is open, so it closes again without traffic. At most
        5 s apart: a ping is cheap, and until it answers every node limits on its own."""
        if self.shared is not None and self._prober is None:
            self._prober = self.breaker.start_prober(self._ping, Backoff(initial=0.5, maximum=5.0))

    async def _ping(self) -> bool:
        assert self.shared is not None
        return bool(await self.shared.redis.ping())

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        if self.pool is not None:
            await self.pool.disconnect()

    def has_rule(self, rule: str) -> bool:
        return rule in self.rules

    async def hit(self, rule: str, key: str) -> None:
        """Count one request of ``key`` against ``rule``; raise RateLimited when over."""
        item = self.rules.get(rule)
        if item is None:
            return
        limiter: SharedMovingWindow | LocalMovingWindow = self.local
        if self.shared is not None and self.breaker.allow():
            try:
                async with asyncio.timeout(self.timeout_s):  # no task per check, unlike wait_for
                    allowed = await self.shared.hit(item, rule, key)
                self.breaker.record_success()
                limiter = self.shared
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.breaker.record_failure()
                log.debug("shared rate limit unavailable (%s); using the local limiter", type(exc).__name__)
                FALLBACK.inc()
                allowed = await self.local.hit(item, rule, key)
        else:
            if self.shared is not None:
                FALLBACK.inc()
            allowed = await self.local.hit(item, rule, key)
        if not allowed:
            REJECTED.labels(rule).inc()
            raise RateLimited(f"too many {rule} requests", await self._retry_after_ms(limiter, item, rule, key))

    async def _retry_after_ms(self, limiter: SharedMovingWindow | LocalMovingWindow, item: RateLimitItem,
                              rule: str, key: str) -> int:
        try:
            stats = await asyncio.wait_for(limiter.get_window_stats(item, rule, key), self.timeout_s)
            return max(1, int((stats.reset_time - time.time()) * 1000))
        except Exception:
            return int(item.get_expiry() * 1000)
