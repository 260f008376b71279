"""Presence state in Redis. Every key has a TTL so nothing outlives its owner.

  pres:s:{user}        hash session_id -> node          sessions of a user
  pres:st:{user}       hash status, activity, since     the user's chosen status
  pres:aud:{user}      hash guilds, friends (JSON)      who is told about changes
  pres:node:{node}     set "user|session"               sessions held by a gateway node
  pres:nodes           hash node -> last heartbeat (epoch seconds)
  pres:typing          zset "channel|user" -> expiry (epoch seconds)
  pres:ty:{user}       set of channel ids the user is typing in
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from libs.db.templates import fill

NODES = "pres:nodes"
TYPING = "pres:typing"
OFFLINE_DUE = "pres:offline-due"  # user -> when their last session's close is announced


def _d(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


SESSIONS_PREFIX = "pres:s:"  # + user: hash session -> node
STATUS_PREFIX = "pres:st:"  # + user: hash of the chosen status and what was shown


def _s(user: str) -> str:
    return SESSIONS_PREFIX + user


def _st(user: str) -> str:
    return STATUS_PREFIX + user


AUDIENCE_PREFIX = "pres:aud:"  # + user: hash guilds, friends
NODE_PREFIX = "pres:node:"  # + node: set "user|session"


def _aud(user: str) -> str:
    return AUDIENCE_PREFIX + user


def _node(node: str) -> str:
    return NODE_PREFIX + node


def _ty(user: str) -> str:
    return f"pres:ty:{user}"


def _chosen(raw: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {_d(k): _d(v) for k, v in raw.items()}
    if "activity" in out:
        out["activity"] = orjson.loads(out["activity"]) if out["activity"] != "null" else None
    return out


# The key names the scripts below read and write, in place of ``%(name)s``.
_KEY_NAMES = {"%(sessions)s": SESSIONS_PREFIX, "%(status)s": STATUS_PREFIX, "%(audience)s": AUDIENCE_PREFIX,
              "%(node)s": NODE_PREFIX, "%(offline)s": OFFLINE_DUE, "%(nodes)s": NODES}


# ARGV[1]: a JSON array of user ids -> JSON [[index, sessions, status, activity, since], ...]
# for the users with at least one session (index is 1-based into the array). The user ids go
# as one argument and the script names the keys it reads (as the voice scripts do: a single
# Redis or Sentinel, not Redis Cluster): a lookup of a few thousand contacts in a reconnect
# storm spent most of presence's CPU packing two key arguments each.
MANY_LUA = fill("""
local users = cjson.decode(ARGV[1])
local out = {}
for i = 1, #users do
  local n = redis.call('HLEN', '%(sessions)s' .. users[i])
  if n > 0 then
    local st = redis.call('HMGET', '%(status)s' .. users[i], 'status', 'activity', 'since')
    out[#out + 1] = {i, n, st[1] or false, st[2] or false, st[3] or false}
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
""", _KEY_NAMES)


# Opening sessions, for a batch of them in one call and (a script) one atomic step.
# ARGV[1]: a JSON array of [user, session, node, guilds JSON, friends JSON]; ARGV[2]: the key
# TTL (s); ARGV[3]: now (epoch seconds) -> JSON [[sessions before, [status hash as field,
# value, ...]], ...], one per session in order. A user twice in the batch sees the first
# session in the second's count; a session already recorded is not counted before itself.
# One argument instead of seven commands per session: building that pipeline was most of
# presence's CPU in a connect burst.
OPEN_LUA = fill("""
local sessions = cjson.decode(ARGV[1])
local ttl = tonumber(ARGV[2])
local out = {}
local nodes = {}
for i = 1, #sessions do
  local user, sid, node = sessions[i][1], sessions[i][2], sessions[i][3]
  local skey, stkey, aud = '%(sessions)s' .. user, '%(status)s' .. user, '%(audience)s' .. user
  local n = redis.call('HLEN', skey)
  if redis.call('HSET', skey, sid, node) == 0 then n = n - 1 end
  redis.call('EXPIRE', skey, ttl)
  redis.call('HSET', aud, 'guilds', sessions[i][4], 'friends', sessions[i][5])
  redis.call('EXPIRE', aud, ttl)
  redis.call('EXPIRE', stkey, ttl * 30)
  out[i] = {n, redis.call('HGETALL', stkey)}
  redis.call('ZREM', '%(offline)s', user)
  if not nodes[node] then nodes[node] = {} end
  table.insert(nodes[node], user .. '|' .. sid)
end
for node, members in pairs(nodes) do
  local nkey = '%(node)s' .. node
  for j = 1, #members, 1000 do
    redis.call('SADD', nkey, unpack(members, j, math.min(j + 999, #members)))
  end
  redis.call('EXPIRE', nkey, ttl)
  redis.call('HSETNX', '%(nodes)s', node, ARGV[3])
end
return cjson.encode(out)
""", _KEY_NAMES)


class PresenceStore:
    def __init__(self, redis: aioredis.Redis, key_ttl_s: int) -> None:
        self.r = redis
        self.ttl = key_ttl_s
        self._many_script = redis.register_script(MANY_LUA)
        self._open_script = redis.register_script(OPEN_LUA)

    # -- sessions ------------------------------------------------------------------------
    async def open_sessions(self, sessions: list[tuple[str, str, str, list[str], list[str]]]
                            ) -> list[tuple[int, dict[str, Any]]]:
        """Record sessions (user, session, node, guilds, friends), all in one script call
        (one round trip, one atomic step); for each, the user's session count before it and their chosen
        status. A user twice in the list sees the first session in the second's count.
        A user back within the offline grace leaves the offline queue: the sweep would
        only have found them online again."""
        if not sessions:
            return []
        raw = await self._open_script(args=[
            orjson.dumps([[user, session_id, node, orjson.dumps(guilds).decode(), orjson.dumps(friends).decode()]
                          for user, session_id, node, guilds, friends in sessions]),
            self.ttl, time.time()])
        out = []
        for before, flat in orjson.loads(raw):
            # cjson writes an empty Lua table as an object: a user with no chosen status
            pairs = flat if isinstance(flat, list) else []
            out.append((int(before), _chosen(dict(zip(pairs[::2], pairs[1::2], strict=True)))))
        return out

    async def close_sessions(self, sessions: list[tuple[str, str, str]]) -> list[int]:
        """Forget sessions (user, session, node) in one round trip; for each, how many
        sessions the user has left after it (-1 when it was not known)."""
        if not sessions:
            return []
        p = self.r.pipeline(transaction=True)
        for user, session_id, node in sessions:
            p.hdel(_s(user), session_id)
            p.hlen(_s(user))
            p.srem(_node(node), f"{user}|{session_id}")
        res = await p.execute()
        return [int(res[i + 1]) if res[i] else -1 for i in range(0, len(res), 3)]

    async def session_count(self, user: str) -> int:
        return int(await self.r.hlen(_s(user)))

    async def audience(self, user: str) -> tuple[list[str], list[str]]:
        raw = await self.r.hmget(_aud(user), ["guilds", "friends"])
        return (orjson.loads(raw[0]) if raw[0] else [], orjson.loads(raw[1]) if raw[1] else [])

    # -- status --------------------------------------------------------------------------
    async def chosen(self, user: str) -> dict[str, Any]:
        return _chosen(await self.r.hgetall(_st(user)))

    async def set_chosen(self, user: str, status: str, activity: dict[str, str] | None) -> None:
        await self.r.hset(_st(user), mapping={"status": status, "activity": orjson.dumps(activity)})
        await self.r.expire(_st(user), self.ttl * 30)

    async def set_shown_many(self, shown: list[tuple[str, str, str]]) -> None:
        """What others were last told of each (user, shown, since), and when it changed: one
        pipeline (no transaction: each user's record stands alone)."""
        async with self.r.pipeline(transaction=False) as pipe:
            for user, what, since in shown:
                pipe.hset(_st(user), mapping={"shown": what, "since": since})
            await pipe.execute()

    async def many(self, users: list[str]) -> list[tuple[str, int, dict[str, Any]]]:
        """(user, session count, chosen status) for each of ``users`` who has a session
        (the others are offline whatever they chose): one script call, one reply to parse,
        instead of two replies per user."""
        if not users:
            return []
        raw = await self._many_script(args=[orjson.dumps(users)])
        out = []
        for index, sessions, status, activity, since in orjson.loads(raw):
            chosen: dict[str, Any] = {}
            if status:
                chosen["status"] = status
            if activity:
                chosen["activity"] = orjson.loads(activity) if activity != "null" else None
            if since:
                chosen["since"] = since
            out.append((users[int(index) - 1], int(sessions), chosen))
        return out

    # -- nodes ---------------------------------------------------------------------------
    async def heartbeat(self, node: str) -> None:
        await self.r.hset(NODES, node, time.time())

    async def node_sessions(self, node: str) -> int:
        return int(await self.r.scard(_node(node)))

    async def dead_nodes(self, timeout_s: float) -> list[str]:
        now = time.time()
        return [_d(n) for n, ts in (await self.r.hgetall(NODES)).items() if now - float(ts) > timeout_s]

    async def live_nodes(self, timeout_s: float) -> set[str]:
        now = time.time()
        return {_d(n) for n, ts in (await self.r.hgetall(NODES)).items() if now - float(ts) <= timeout_s}

    async def claim_node_cleanup(self, node: str, hold_s: int = 30) -> bool:
        return bool(await self.r.set(f"pres:lock:node:{node}", "1", nx=True, ex=hold_s))

    async def take_node_sessions(self, node: str) -> list[tuple[str, str]]:
        members = await self.r.smembers(_node(node))
        return [tuple(_d(m).split("|", 1)) for m in members]  # type: ignore[misc]

    async def forget_node(self, node: str) -> None:
        p = self.r.pipeline(transaction=True)
        p.delete(_node(node))
        p.hdel(NODES, node)
        await p.execute()

    async def scan_users(self, match: str = "pres:s:*", count: int = 500) -> list[str]:
        users = []
        async for key in self.r.scan_iter(match=match, count=count):
            users.append(_d(key).split(":", 2)[2])
        return users

    async def sessions_of(self, user: str) -> dict[str, str]:
        return {_d(k): _d(v) for k, v in (await self.r.hgetall(_s(user))).items()}

    # -- typing --------------------------------------------------------------------------
    async def typing_start(self, user: str, channel: str, ttl_s: float) -> bool:
        """True when the user was not typing there already."""
        p = self.r.pipeline(transaction=True)
        p.zadd(TYPING, {f"{channel}|{user}": time.time() + ttl_s})
        p.sadd(_ty(user), channel)
        p.expire(_ty(user), int(ttl_s) + 60)
        added, _, _ = await p.execute()
        return bool(added)

    async def typing_stop_many(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """End the typing of (user, channel) pairs in one transaction; for each, True when
        this call ended it (exactly one caller wins)."""
        p = self.r.pipeline(transaction=True)
        for user, channel in pairs:
            p.zrem(TYPING, f"{channel}|{user}")
            p.srem(_ty(user), channel)
        res = await p.execute()
        return [bool(res[i]) for i in range(0, len(res), 2)]

    async def typing_channels_of(self, users: list[str]) -> dict[str, list[str]]:
        """The channels each user is typing in (one round trip)."""
        p = self.r.pipeline(transaction=False)
        for user in users:
            p.smembers(_ty(user))
        return {user: [_d(c) for c in chans] for user, chans in zip(users, await p.execute(), strict=True)}

    async def typing_expired(self, now: float, limit: int = 500) -> list[tuple[str, str]]:
        members = await self.r.zrangebyscore(TYPING, "-inf", now, start=0, num=limit)
        return [tuple(_d(m).split("|", 1)) for m in members]  # type: ignore[misc]

    async def typing_next_expiry(self) -> float | None:
        first = await self.r.zrange(TYPING, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    # -- offline after a grace period ---------------------------------------------------------
    async def offline_later(self, users: list[str], due: float) -> None:
        if users:
            await self.r.zadd(OFFLINE_DUE, dict.fromkeys(users, due))

    async def offline_due(self, now: float, limit: int = 500) -> list[str]:
        """Users whose grace has run out, each handed to exactly one caller (ZREM decides)."""
        members = await self.r.zrangebyscore(OFFLINE_DUE, "-inf", now, start=0, num=limit)
        if not members:
            return []
        p = self.r.pipeline(transaction=False)
        for m in members:
            p.zrem(OFFLINE_DUE, m)  # type: ignore[arg-type]
        removed = await p.execute()
        return [_d(m) for m, gone in zip(members, removed) if gone]

    async def offline_next(self) -> float | None:
        first = await self.r.zrange(OFFLINE_DUE, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def sizes(self) -> dict[str, int]:
        p = self.r.pipeline(transaction=False)
        p.hlen(NODES)
        p.zcard(TYPING)
        nodes, typing = await p.execute()
        return {"nodes": int(nodes), "typing": int(typing)}

    # -- resync after an outage -------------------------------------------------------------
    async def resync_add(self, node: str, generation: str, members: list[str]) -> None:
        key = f"pres:resync:{node}:{generation}"
        if members:
            await self.r.sadd(key, *members)
        await self.r.expire(key, 300)

    async def resync_ghosts(self, node: str, generation: str) -> list[tuple[str, str]]:
        """Sessions presence holds for ``node`` that the node did not report."""
        key = f"pres:resync:{node}:{generation}"
        ghosts = await self.r.sdiff([_node(node), key])
        await self.r.delete(key)
        return [tuple(_d(m).split("|", 1)) for m in ghosts]  # type: ignore[misc]
