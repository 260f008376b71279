"""Distributed rate limits (the ``limits`` library's moving window) shared by every
gateway node through Redis, with a per-node in-memory window that answers alone while
Redis is away.

Each rule is a ``limits`` string ("30/minute", "10/10 seconds"). Every check first counts
the hit in the node's own window: a key that has used its whole limit on this node is
refused there, without a round trip. Otherwise the hit goes to Redis, where every node's
hits for the key are counted, in one of two ways:

- *waiting*: the check waits for Redis's answer (the key is new to this node, or near its
  limit);
- *ahead*: while this node's view of the key (the count Redis last answered, plus this
  node's hits not answered yet) stays within ``ahead_fraction`` of the limit (half, by
  default), the hit is admitted at once and recorded in Redis in the background. A send
  far below its limit does not wait for a Redis round trip.

A user whose hits all come through one node is limited exactly. One who is active on
several nodes can exceed a limit only by what a node admits ahead on a view that does not
show the other nodes' latest hits yet: at most ``ahead_fraction`` of the limit, and only
until that node's next answer from Redis, a round trip later, brings the true count.
Redis calls run under a short timeout and a breaker; when either trips, the node's own
window decides, so a Redis outage loosens limits by at most the number of nodes and never
stops traffic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import NoReturn

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
CHECKS = Counter("chat_ratelimit_checks_total",
                 "Rate-limit checks by who answered: node (the node's own window refused, or no Redis), "
                 "ahead (admitted before Redis answered), shared (Redis answered), fallback (Redis unavailable)",
                 ["path"])
UNRECORDED = Counter("chat_ratelimit_ahead_unrecorded_total",
                     "Hits admitted ahead of Redis that Redis did not record (it failed); the node's window has them")
BATCH = Histogram("chat_ratelimit_batch_size", "Rate-limit checks sent to Redis in one pipeline", ["batch"],
                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

def _fell_back() -> None:
    """A check answered by the node's own window because Redis was unavailable (counted
    under both names: ``chat_ratelimit_fallback_total`` predates the ``path`` label)."""
    FALLBACK.inc()
    CHECKS.labels("fallback").inc()


# The moving window on ``limits``' own keys (a list of hit timestamps, newest first), one
# call per hit: hits that left the window are popped from the tail (each once), so the
# list is the window and its length the count, which is returned with the verdict
# ({acquired, count}). ARGV[4] = "1" records a hit the node already admitted (ahead),
# even over the limit, so every node's later checks count it.
ACQUIRE_LUA = """
local key = KEYS[1]
local now, limit, expiry = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local oldest = now - expiry
while true do
  local last = redis.call('lindex', key, -1)
  if not last or tonumber(last) >= oldest then break end
  redis.call('rpop', key)
end
local count = redis.call('llen', key)
if count >= limit and ARGV[4] ~= '1' then
  return {0, count}
end
redis.call('lpush', key, now)
redis.call('expire', key, expiry)
return {1, count + 1}
"""

Check = tuple[str, int, int, bool]  # key, limit, expiry (s), admitted already


class _View:
    """What this node knows of one key: the count Redis last answered and this node's
    hits sent after that answer and not answered yet."""

    __slots__ = ("count", "pending", "seen", "expiry")

    def __init__(self, expiry: int) -> None:
        self.count = 0
        self.pending = 0
        self.seen = time.monotonic()
        self.expiry = expiry


class SharedMovingWindow:
    """The moving window in Redis, on ``limits``' keys (``self.library``, the library's own
    ``MovingWindowRateLimiter``, sees the same hits and answers ``get_window_stats``).

    Checks go to Redis in pipelines, one at a time: the checks made while one is in flight
    go together in the next, and Redis sees this node's hits in the order they were made,
    so a check that waits for Redis counts every hit this node admitted ahead of it.
    """

    def __init__(self, storage: RedisStorage, pool: aioredis.BlockingConnectionPool, *,
                 ahead_fraction: float = 0.5, on_recorded: Callable[[BaseException | None], None] | None = None,
                 max_batch: int = 256, sweep_s: float = 10.0) -> None:
        self.library = MovingWindowRateLimiter(storage)
        self.bridge = storage.bridge
        self.redis = aioredis.Redis(connection_pool=pool)
        self.script = self.redis.register_script(ACQUIRE_LUA)
        self.ahead_fraction = ahead_fraction
        self.views: dict[str, _View] = {}
        # told whether each hit admitted ahead reached Redis (the caller's breaker)
        self.on_recorded = on_recorded or (lambda exc: None)
        self.batches: GroupCommit[Check, tuple[bool, int]] = GroupCommit(
            self._acquire, name="shared", max_batch=max_batch, max_inflight=1, size_metric=BATCH)
        self._sweep_s = sweep_s
        self._next_sweep = time.monotonic() + sweep_s

    def _key(self, item: RateLimitItem, identifiers: tuple[str, ...]) -> str:
        return self.bridge.prefixed_key(item.key_for(*identifiers))

    def ahead(self, item: RateLimitItem, *identifiers: str) -> bool:
        """Admit the hit at once if this node's view of the key leaves room (see the module
        docstring), and record it in Redis in the background; False: call ``hit``."""
        key = self._key(item, identifiers)
        view = self.views.get(key)
        if view is None or view.count + view.pending + 1 > self.ahead_fraction * item.amount:
            return False
        view.pending += 1
        fut = self.batches.submit_nowait((key, item.amount, item.get_expiry(), True))
        fut.add_done_callback(lambda f: self._recorded(view, f))
        return True

    def _recorded(self, view: _View, fut: asyncio.Future[tuple[bool, int]]) -> None:
        view.pending -= 1
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            view.count, view.seen = fut.result()[1], time.monotonic()
        else:
            UNRECORDED.inc()
            view.count = 2**31  # unknown now: the next check waits for Redis
        self.on_recorded(exc)

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        """Count the hit in Redis if the key is under its limit there; whether it was."""
        key = self._key(item, identifiers)
        acquired, count = await self.batches.submit((key, item.amount, item.get_expiry(), False))
        view = self.views.get(key)
        if view is None:
            self._sweep()
            view = self.views[key] = _View(item.get_expiry())
        view.count, view.seen = count, time.monotonic()
        return acquired

    def _sweep(self) -> None:
        """Forget views not refreshed for a whole window (at most once per ``sweep_s``)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_s
        for key in [k for k, v in self.views.items() if not v.pending and v.seen < now - v.expiry]:
            del self.views[key]

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        return await self.library.get_window_stats(item, *identifiers)

    async def _acquire(self, batch: list[Check]) -> list[tuple[bool, int]]:
        try:
            try:
                return await self._pipeline(batch)
            except redis.exceptions.NoScriptError:
                await self.redis.script_load(self.script.script)  # Redis restarted: scripts are gone
                return await self._pipeline(batch)
        except (redis.exceptions.RedisError, OSError) as exc:
            # Unavailable fails the whole batch at once (no retry one check at a time).
            raise Unavailable(f"rate-limit store unavailable ({type(exc).__name__})") from None

    async def _pipeline(self, batch: list[Check]) -> list[tuple[bool, int]]:
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for key, limit, expiry, admitted in batch:
            pipe.evalsha(self.script.sha, 1, key, now, limit, expiry, 1 if admitted else 0)  # type: ignore[no-untyped-call]
        return [(bool(acquired), int(count)) for acquired, count in await pipe.execute()]


class LocalMovingWindow:
    """The node's own window: the same moving window as the shared limiter, in memory. It
    counts every hit the node admits, refuses a key that used its whole limit on this
    node, and is the whole limit while Redis is away.

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

    def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        """Count the hit if the key is under its limit on this node; whether it was (no
        coroutine: every check of every event passes here)."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        hits = self._window(item, identifiers, now)
        if len(hits) >= item.amount:
            return False
        hits.append(now)
        return True

    def undo(self, item: RateLimitItem, *identifiers: str) -> None:
        """Take back the last hit of the key (Redis refused it after the node counted it)."""
        hits = self._hits.get(item.key_for(*identifiers))
        if hits:
            hits.pop()

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
                 key_prefix: str = "chat-rl", max_connections: int = 16, ahead_fraction: float = 0.5) -> None:
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
            self.shared = SharedMovingWindow(storage, self.pool, ahead_fraction=ahead_fraction,
                                             on_recorded=self._recorded)

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
        if not self.local.hit(item, rule, key):  # this node alone used the whole window
            CHECKS.labels("node").inc()
            await self._refuse(self.local, item, rule, key)
        shared = self.shared
        if shared is None:
            CHECKS.labels("node").inc()
            return
        if not self.breaker.allow():
            _fell_back()
            return
        if shared.ahead(item, rule, key):
            CHECKS.labels("ahead").inc()
            return
        try:
            async with asyncio.timeout(self.timeout_s):  # no task per check, unlike wait_for
                allowed = await shared.hit(item, rule, key)
            self.breaker.record_success()
        except asyncio.CancelledError:
            self.local.undo(item, rule, key)
            raise
        except Exception as exc:
            self.breaker.record_failure()
            log.debug("shared rate limit unavailable (%s); using the local limiter", type(exc).__name__)
            _fell_back()
            return  # the node's own window admitted it
        CHECKS.labels("shared").inc()
        if not allowed:
            self.local.undo(item, rule, key)
            await self._refuse(shared, item, rule, key)

    def _recorded(self, exc: BaseException | None) -> None:
        """A hit admitted ahead reached Redis, or did not: the breaker hears of it."""
        if exc is None:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()
            log.debug("a hit admitted ahead was not recorded in Redis (%s)", type(exc).__name__)

    async def _refuse(self, limiter: SharedMovingWindow | LocalMovingWindow, item: RateLimitItem,
                      rule: str, key: str) -> NoReturn:
        REJECTED.labels(rule).inc()
        raise RateLimited(f"too many {rule} requests", await self._retry_after_ms(limiter, item, rule, key))

    async def _retry_after_ms(self, limiter: SharedMovingWindow | LocalMovingWindow, item: RateLimitItem,
                              rule: str, key: str) -> int:
        try:
            stats = await asyncio.wait_for(limiter.get_window_stats(item, rule, key), self.timeout_s)
            return max(1, int((stats.reset_time - time.time()) * 1000))
        except Exception:
            return int(item.get_expiry() * 1000)
