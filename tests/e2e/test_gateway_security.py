"""Connection security, frame limits, admin endpoints and distributed rate limits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import aiohttp
import pytest
import socketio

from libs.testing.client import ChatClient, guild_with_members, uid
from libs.testing.fixtures import ALLOWED_ORIGIN, Stack
from libs.testing.wire_fuzz import metric_total


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


async def test_polling_sessions_that_never_connect_are_closed_and_forgotten(http, cluster: Stack):
    """Nobody takes from the queue of a polling session whose client went quiet: the
    no-CONNECT close must not wait for it, and the session must be gone afterwards."""
    url = f"{cluster.gateways[0]}/socket.io/?EIO=4&transport=polling"
    ops = f"http://127.0.0.1:{cluster.cluster.gateways[0].ops_port}"
    tasks_before = await metric_total(ops, "chat_process_asyncio_tasks")
    sids = []
    for _ in range(20):
        async with http.get(url, headers={"Origin": ALLOWED_ORIGIN}) as r:
            assert r.status == 200
            sids.append(json.loads((await r.text())[1:])["sid"])
    await asyncio.sleep(3)  # past CHAT_CONNECT_TIMEOUT_S=2 of the test cluster: the closes have begun
    deadline = time.monotonic() + 10
    while (tasks := await metric_total(ops, "chat_process_asyncio_tasks")) >= tasks_before + 10 \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    assert tasks < tasks_before + 10  # no close left waiting for ever (20 would be)
    for sid in sids:
        async with http.get(f"{url}&sid={sid}", headers={"Origin": ALLOWED_ORIGIN}) as r:
            assert r.status == 400, (sid, r.status, await r.text())  # unknown session: closed and removed


async def test_a_connect_still_being_handled_outlives_the_no_connect_timeout(own_stack):
    """The no-CONNECT timeout closes sessions that never sent CONNECT, not a CONNECT whose
    handler is still waiting (here for `ready`, with messaging paused past the timeout)."""
    stack = own_stack(gateways=1, CHAT_CONNECT_TIMEOUT_S="1", CHAT_BUS_REQUEST_TIMEOUT_S="10")
    (url,) = stack.gateways
    (messaging,) = [p for p in stack.cluster.processes if p.module == "messaging"]
    assert messaging.proc is not None
    async with aiohttp.ClientSession() as http:
        user = await ChatClient(http, url, uid("slow")).login()
        os.kill(messaging.proc.pid, signal.SIGSTOP)
        try:
            connecting = asyncio.ensure_future(user.connect())
            await asyncio.sleep(3)  # three no-CONNECT timeouts, `ready` still waiting on messaging
            assert not connecting.done()
        finally:
            os.kill(messaging.proc.pid, signal.SIGCONT)
        sock = await asyncio.wait_for(connecting, 20)
        assert sock.events["ready"] and sock.sio.connected
        await asyncio.sleep(1.5)  # and it is not closed afterwards either
        assert sock.sio.connected
        await user.close()


async def test_connects_past_the_admission_limit_wait_their_turn(own_stack):
    """With CHAT_CONNECT_CONCURRENCY=2 and messaging paused, two connects wait for `ready`
    and the other four wait for their turn (not for messaging, so they cannot time out
    there); when messaging is back, all six connect."""
    stack = own_stack(gateways=1, CHAT_CONNECT_CONCURRENCY="2", CHAT_BUS_REQUEST_TIMEOUT_S="10")
    (url,) = stack.gateways
    ops = f"http://127.0.0.1:{stack.cluster.gateways[0].ops_port}"
    (messaging,) = [p for p in stack.cluster.processes if p.module == "messaging"]
    assert messaging.proc is not None
    async with aiohttp.ClientSession() as http:
        users = [await ChatClient(http, url, uid(f"queued{i}")).login() for i in range(6)]
        os.kill(messaging.proc.pid, signal.SIGSTOP)
        try:
            connecting = [asyncio.ensure_future(u.connect()) for u in users]
            deadline = time.monotonic() + 8
            while await metric_total(ops, "chat_gateway_connects_waiting") != 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert await metric_total(ops, "chat_gateway_connects_waiting") == 4
            assert not any(c.done() for c in connecting)
        finally:
            os.kill(messaging.proc.pid, signal.SIGCONT)
        socks = await asyncio.wait_for(asyncio.gather(*connecting), 30)
        assert all(s.events["ready"] and s.sio.connected for s in socks)
        assert await metric_total(ops, "chat_gateway_connects_waiting") == 0
        for u in users:
            await u.close()


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

        on_s1, on_s2 = await asyncio.gather(burst(s1, "a", 25), burst(s2, "b", 25))
        acks = on_s1 + on_s2
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

        # Redis away: each node enforces the same limit on its own, counting what it already
        # admitted in the window.
        stack.servers.redis.kill()
        local = await burst(s1, "c", 35)
        assert sum(1 for a in local if a["ok"]) == 30 - sum(1 for a in on_s1 if a["ok"])
        assert all(a["error"]["code"] == "rate_limited" for a in local if not a["ok"])
        stack.servers.redis.start()
        await user.close()
