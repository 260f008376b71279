"""Cleanup when anything dies: a gateway node killed with -9, and connection churn that
must leave no trace in Redis, process maps or asyncio tasks."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import redis.asyncio as aioredis
import socketio

from libs.testing.client import ChatClient, guild_with_members


async def test_kill_9_of_a_node_marks_its_users_offline_and_stops_their_typing(own_stack):
    stack = own_stack()
    g1, g2 = stack.gateways
    async with aiohttp.ClientSession() as http:
        observer = await ChatClient(http, g2, "observer").login()
        users = [await ChatClient(http, g1, f"victim{i}").login() for i in range(50)]
        guild = await guild_with_members(observer, *users)
        ch = guild["text_channel"]
        obs = await observer.connect()
        socks = await asyncio.gather(*(u.connect() for u in users))
        for s in socks[:10]:
            assert (await s.call("typing:start", {"channel_id": ch}))["ok"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            online = {e["user_id"] for e in obs.events["presence"] if e["status"] == "online"}
            if len(online & {u.user_id for u in users}) == 50:
                break
            await asyncio.sleep(0.1)
        await obs.wait_for("typing", 10)

        killed_at = time.monotonic()
        stack.cluster.gateways[0].kill()
        victims = {u.user_id for u in users}
        while time.monotonic() - killed_at < 30:
            last: dict[str, str] = {}
            for e in obs.events["presence"]:
                last[e["user_id"]] = e["status"]
            if all(last.get(v) == "offline" for v in victims):
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - killed_at
        stopped = {e["user_id"] for e in obs.events["typing:stop"]}
        for s in socks:
            await s.disconnect()
        await observer.close()
    assert all(last.get(v) == "offline" for v in victims), last
    assert elapsed <= 30, elapsed
    assert {u.user_id for u in users[:10]} <= stopped


async def _metric(http: aiohttp.ClientSession, port: int, name: str) -> float:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


async def _state(http, stack, redis) -> dict[str, float]:
    keys = [k async for k in redis.scan_iter(count=1000) if not k.startswith(b"chat-rl")]
    out: dict[str, float] = {"redis_keys": len(keys)}
    for gw in stack.cluster.gateways:
        for name in ("chat_gateway_connections_active", "chat_gateway_sessions_users", "chat_gateway_rooms",
                     "chat_gateway_pending_ready", "chat_process_asyncio_tasks"):
            out[f"{gw.name}:{name}"] = await _metric(http, gw.ops_port, name)
    return out


async def test_connect_disconnect_churn_returns_to_baseline(own_stack):
    # Engine.IO's per-socket ping task outlives its socket by up to one ping interval:
    # a short interval lets the test see the true baseline sooner.
    stack = own_stack(CHAT_PING_INTERVAL_S="3", CHAT_PING_TIMEOUT_S="5")
    urls = stack.gateways
    redis = aioredis.Redis.from_url(stack.servers.redis.url)
    async with aiohttp.ClientSession() as http:
        users = [await ChatClient(http, urls[i % 2], f"churn{i}").login() for i in range(50)]
        guild = await guild_with_members(users[0], *users[1:])
        ch = guild["text_channel"]

        async def cycle(user: ChatClient, i: int) -> None:
            c = socketio.AsyncClient(reconnection=False)
            ready = asyncio.Event()
            c.on("ready", lambda _d: ready.set())
            await c.connect(urls[i % 2], auth={"token": user.token}, transports=["websocket"], wait_timeout=10)
            await asyncio.wait_for(ready.wait(), 10)
            if i % 2 == 0:
                await c.call("typing:start", {"channel_id": ch}, timeout=10)
            if i % 5 == 0:
                await c.call("presence:update", {"status": ("idle", "dnd", "online", "invisible")[i % 4]}, timeout=10)
            await c.disconnect()

        async def rounds(n: int) -> None:
            for r in range(n):
                await asyncio.gather(*(cycle(u, r * 50 + j) for j, u in enumerate(users)))

        await rounds(1)
        await asyncio.sleep(5)  # typing expiry (3 s in tests)
        baseline = await _state(http, stack, redis)
        started = time.monotonic()
        await rounds(100)  # 5,000 connect/disconnect cycles
        churn_s = time.monotonic() - started
        deadline = time.monotonic() + 30
        while True:
            await asyncio.sleep(1)
            after = await _state(http, stack, redis)
            settled = all(after[k] <= baseline[k] + (5 if k.endswith("tasks") else 0) for k in baseline)
            if settled or time.monotonic() > deadline:
                break
    await redis.aclose()
    for k, v in baseline.items():
        slack = 5 if k.endswith("asyncio_tasks") else 0
        assert after[k] <= v + slack, (k, v, after[k], churn_s)
    assert all(after[k] == 0 for k in after if k.endswith(("connections_active", "sessions_users", "pending_ready")))


async def test_presence_that_lost_a_nodes_sessions_gets_them_back(own_stack):
    """Redis lost presence's record of a node's sessions (a failover to an empty replica):
    the node's heartbeats report more sessions than presence holds, the same difference two
    heartbeats running, so presence asks the node to re-register them."""
    stack = own_stack(gateways=1)
    (url,) = stack.gateways
    node = stack.cluster.gateways[0].name
    redis = aioredis.Redis.from_url(stack.servers.redis.url)
    async with aiohttp.ClientSession() as http:
        users = [await ChatClient(http, url, f"kept{i}").login() for i in range(3)]
        socks = [await u.connect() for u in users]
        assert await redis.scard(f"pres:node:{node}") == 3
        await redis.delete(f"pres:node:{node}", *(f"pres:s:{u.user_id}" for u in users))
        deadline = time.monotonic() + 30  # two 5 s heartbeats, then the re-registration
        while await redis.scard(f"pres:node:{node}") < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        held = await redis.scard(f"pres:node:{node}")
        sessions = [await redis.hlen(f"pres:s:{u.user_id}") for u in users]
        for s in socks:
            await s.disconnect()
    await redis.aclose()
    assert held == 3
    assert sessions == [1, 1, 1]
