"""Connection security, frame limits, admin endpoints and distributed rate limits."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import socketio

from libs.testing.client import ChatClient, guild_with_members, uid
from libs.testing.fixtures import ALLOWED_ORIGIN, Stack


async def test_foreign_origin_is_refused(http, cluster: Stack):
    url = f"{cluster.gateways[0]}/socket.io/?EIO=4&transport=polling"
    async with http.get(url, headers={"Origin": "http://evil.example"}) as r:
        assert r.status == 400
    async with http.get(url, headers={"Origin": ALLOWED_ORIGIN}) as r:
        assert r.status == 200
        assert (await r.text()).startswith("0{")
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(url.replace("http", "ws").replace("polling", "websocket"),
                              headers={"Origin": "http://evil.example"})


async def test_oversize_frame_disconnects_and_the_node_survives(http, cluster: Stack):
    user = await ChatClient(http, cluster.gateways[0], uid("big")).login()
    guild = await guild_with_members(user)
    sock = await user.connect()
    gone = asyncio.Event()
    sock.sio.on("disconnect", lambda *a: gone.set())
    await sock.sio.emit("message:send", {"channel_id": guild["text_channel"], "content": "x" * 70_000, "nonce": "n"})
    await asyncio.wait_for(gone.wait(), 10)
    again = await user.connect()
    ack = await again.call("message:send", {"channel_id": guild["text_channel"], "content": "small", "nonce": "n2"})
    assert ack["ok"], ack
    await user.close()


async def test_engineio_session_without_connect_is_closed(http, cluster: Stack):
    url = cluster.gateways[0].replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with http.ws_connect(url) as ws:
        opened = await ws.receive_str(timeout=5)
        assert opened.startswith("0{")
        started = time.monotonic()
        while True:  # answer pings like a live client, but never send CONNECT
            msg = await ws.receive(timeout=10)
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "2":
                await ws.send_str("3")
                continue
            break
        closed = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert msg.type in closed or (msg.type == aiohttp.WSMsgType.TEXT and msg.data == "1"), msg  # EIO close
        assert time.monotonic() - started < 8  # CHAT_CONNECT_TIMEOUT_S=2 in the test cluster


async def test_admin_recovery_requires_the_admin_token(http, cluster: Stack):
    ops = f"http://127.0.0.1:{cluster.cluster.gateways[0].ops_port}"
    async with http.post(f"{ops}/admin/socket/recovery") as r:
        assert r.status == 401
    async with http.post(f"{ops}/admin/socket/recovery", headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 401
    async with http.post(f"{ops}/admin/socket/recovery", headers={"Authorization": "Bearer test-admin-token"}) as r:
        assert r.status == 200 and (await r.json())["ok"] is True
    for path in ("/health/socket", "/metrics/socket", "/status/circuit-breakers"):
        async with http.get(ops + path) as r:
            assert r.status == 200, path
    async with http.get(ops + "/health/socket") as r:
        body = await r.json()
    assert set(body["dependencies"]) == {"redis", "nats"}


async def test_rate_limits_hold_across_nodes_and_fall_back_per_node(own_stack):
    stack = own_stack(default_limits=True)
    g1, g2 = stack.gateways
    async with aiohttp.ClientSession() as http:
        user = await ChatClient(http, g1, "limited").login()
        guild = await guild_with_members(user)
        ch = guild["text_channel"]
        s1 = await user.connect(g1)
        s2 = await user.connect(g2)

        async def burst(sock, prefix: str, n: int) -> list[dict]:
            return [await sock.call("message:send", {"channel_id": ch, "content": "x", "nonce": f"{prefix}{i}"})
                    for i in range(n)]

        acks = sum(await asyncio.gather(burst(s1, "a", 25), burst(s2, "b", 25)), [])
        accepted = [a for a in acks if a["ok"]]
        refused = [a for a in acks if not a["ok"]]
        assert len(accepted) == 30  # message:send 30/minute per user, shared by both nodes
        assert all(a["error"]["code"] == "rate_limited" and a["error"]["retry_after_ms"] > 0 for a in refused)

        # Connections: 10/minute per IP across the cluster (2 used above).
        refusals = []
        extra = []
        for i in range(10):
            c = socketio.AsyncClient(reconnection=False)
            c.on("connect_error", lambda data: refusals.append(data))
            try:
                await c.connect((g1, g2)[i % 2], auth={"token": user.token}, transports=["websocket"], wait_timeout=5)
                extra.append(c)
            except socketio.exceptions.ConnectionError:
                pass
        assert len(extra) == 8
        assert refusals and refusals[0]["data"]["code"] == "rate_limited" and refusals[0]["data"]["retry_after_ms"] > 0
        for c in extra:
            await c.disconnect()

        # Redis away: each node enforces the same limit on its own.
        stack.servers.redis.kill()
        local = await burst(s1, "c", 35)
        assert sum(1 for a in local if a["ok"]) == 30
        assert all(a["error"]["code"] == "rate_limited" for a in local if not a["ok"])
        stack.servers.redis.start()
        await user.close()
