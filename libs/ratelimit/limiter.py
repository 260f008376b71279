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
from collections.abc import Mapping

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

from libs.errors import RateLimited
from libs.resilience.breaker import CircuitBreaker

log = logging.getLogger(__name__)

REJECTED = Counter("chat_ratelimit_rejected_total", "Requests refused by a rate limit", ["rule"])
FALLBACK = Counter("chat_ratelimit_fallback_total", "Rate-limit checks answered by the per-node limiter")


class RateLimiter:
    def __init__(self, rules: Mapping[str, str], redis_url: str | None, *,
                 breaker: CircuitBreaker | None = None, timeout_s: float = 0.25,
                 key_prefix: str = "chat-rl") -> None:
        self.rules: dict[str, RateLimitItem] = {name: parse(spec) for name, spec in rules.items()}
        self.breaker = breaker or CircuitBreaker("redis-ratelimit")
        self.timeout_s = timeout_s
        self.local = MovingWindowRateLimiter(MemoryStorage())
        self.shared: MovingWindowRateLimiter | None = None
        if redis_url:
            uri = "async+" + redis_url if not redis_url.startswith("async+") else redis_url
            storage = RedisStorage(uri, implementation="redispy", key_prefix=key_prefix,
                                   socket_connect_timeout=1, socket_timeout=1, wrap_exceptions=True)
            self.shared = MovingWindowRateLimiter(storage)

    def has_rule(self, rule: str) -> bool:
        return rule in self.rules

    async def hit(self, rule: str, key: str) -> None:
        """Count one request of ``key`` against ``rule``; raise RateLimited when over."""
        item = self.rules.get(rule)
        if item is None:
            return
        limiter = self.local
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

    async def _retry_after_ms(self, limiter: MovingWindowRateLimiter, item: RateLimitItem,
                              rule: str, key: str) -> int:
        try:
            stats = await asyncio.wait_for(limiter.get_window_stats(item, rule, key), self.timeout_s)
            return max(1, int((stats.reset_time - time.time()) * 1000))
        except Exception:
            return int(item.get_expiry() * 1000)
