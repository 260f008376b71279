"""Voice state in Redis, shared by every voice-bridge replica.

Keys (all with the state TTL, refreshed on every write and keepalive):
  voice:u:<user_id>      the user's record (JSON): the source of truth
  voice:c:<channel_id>   hash user_id -> record, who is in the channel
  voice:n:<node>         set of user ids whose voice session lives on that gateway node
  voice:active           sorted set user_id -> expiry time (sizes for the gauges)

Writes are compare-and-set on the user's record in one Lua script, so two replicas
handling the same user never interleave: the caller reads, decides (domain), writes
"if still what I read", and retries on a lost race. Every call has a timeout and runs
under the process's Redis breaker; Redis away answers Unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from libs.errors import Unavailable
from libs.resilience.breaker import CircuitBreaker
from services.voice_bridge.domain.voice_state import VoiceRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

STORE_ERRORS = Counter("chat_voice_store_errors_total", "Voice state store calls that failed (Redis away or slow)")
CAS_RETRIES = Counter("chat_voice_store_cas_retries_total", "Voice state writes retried after a concurrent change")

USER_PREFIX = "voice:u:"
CHANNEL_PREFIX = "voice:c:"
NODE_PREFIX = "voice:n:"
ACTIVE_KEY = "voice:active"

# KEYS: user, new channel, new node, old channel, old node, active
# ARGV: expected record ('' = none), new record, user id, ttl, expiry time
_CAS_PUT = """
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('SREM', KEYS[5], ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[4])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[3])
return 1
"""

# KEYS: user, channel, node, active.  ARGV: expected record, user id
_CAS_DELETE = """
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
"""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(VoiceRecord)


class Stored:
    """A record as read, with the exact bytes a compare-and-set must find."""

    __slots__ = ("raw", "record")

    def __init__(self, record: VoiceRecord | None, raw: str) -> None:
        self.record = record
        self.raw = raw


class VoiceStateStore:
    def __init__(self, url: str, *, ttl_s: int, timeout_s: float, breaker: CircuitBreaker) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.breaker = breaker
        self.redis: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, socket_keepalive=True,
            health_check_interval=10, retry_on_timeout=False, decode_responses=True)
        self._put = self.redis.register_script(_CAS_PUT)
        self._delete = self.redis.register_script(_CAS_DELETE)
        self.state = "up"

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except (RedisError, OSError) as exc:
            log.debug("closing the voice state store: %s", exc)

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async with self.breaker.guard():
            try:
                result = await asyncio.wait_for(fn(), self.timeout_s)
            except (TimeoutError, RedisError, OSError) as exc:
                STORE_ERRORS.inc()
                self.state = "down"
                log.warning("voice state store: %s", type(exc).__name__)
                raise Unavailable("voice state store unavailable") from None
        self.state = "up"
        return result

    # -- reads ---------------------------------------------------------------------------
    async def get(self, user_id: str) -> Stored:
        raw = await self._call(lambda: self.redis.get(USER_PREFIX + user_id))
        if not raw:
            return Stored(None, "")
        try:
            return Stored(_decoder.decode(raw), raw)
        except msgspec.DecodeError:
            log.error("unreadable voice record; treating it as absent", extra={"user_id": user_id})
            return Stored(None, raw)

    async def users_on_node(self, node: str) -> list[str]:
        members = await self._call(lambda: self.redis.smembers(NODE_PREFIX + node))
        return sorted(members)

    async def channel_members(self, channel_id: str) -> list[VoiceRecord]:
        raw = await self._call(lambda: self.redis.hgetall(CHANNEL_PREFIX + channel_id))
        out = []
        for value in raw.values():
            try:
                out.append(_decoder.decode(value))
            except msgspec.DecodeError:
                continue
        return out

    async def count_active(self) -> int:
        now = time.time()

        async def run() -> int:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zremrangebyscore(ACTIVE_KEY, "-inf", now)
            pipe.zcard(ACTIVE_KEY)
            _removed, count = await pipe.execute()
            return int(count)

        return await self._call(run)

    # -- compare-and-set writes ------------------------------------------------------------
    async def put(self, expected: Stored, new: VoiceRecord) -> bool:
        """Store ``new`` if the user's record is still ``expected``; False on a lost race."""
        old = expected.record or new
        raw = _encoder.encode(new).decode()
        keys = [USER_PREFIX + new.user_id, CHANNEL_PREFIX + new.channel_id, NODE_PREFIX + new.node,
                CHANNEL_PREFIX + old.channel_id, NODE_PREFIX + old.node, ACTIVE_KEY]
        args: list[str | int | float] = [expected.raw, raw, new.user_id, self.ttl_s, time.time() + self.ttl_s]
        done = await self._call(lambda: self._put(keys=keys, args=args))
        if not done:
            CAS_RETRIES.inc()
        return bool(done)

    async def delete(self, expected: Stored) -> bool:
        """Remove the record if it is still ``expected``; False on a lost race."""
        rec = expected.record
        if rec is None:
            return False
        keys = [USER_PREFIX + rec.user_id, CHANNEL_PREFIX + rec.channel_id, NODE_PREFIX + rec.node, ACTIVE_KEY]
        done = await self._call(lambda: self._delete(keys=keys, args=[expected.raw, rec.user_id]))
        if not done:
            CAS_RETRIES.inc()
        return bool(done)

    def health(self) -> dict[str, Any]:
        return {"state": self.state, "breaker": self.breaker.state}
