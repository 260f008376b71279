"""SIGTERM: readiness goes false at once, every client is told to reconnect (staggered),
the process exits cleanly within the grace period, and the clients land on the other node."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request

import aiohttp
import socketio

from libs.testing.client import ChatClient


def ready_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def test_sigterm_moves_200_clients_to_the_other_node(own_stack):
    stack = own_stack(CHAT_DRAIN_GRACE_S="15")
    g1, g2 = stack.cluster.gateways
    url1, url2 = stack.gateways
    async with aiohttp.ClientSession() as http:
        users = [await ChatClient(http, url1, f"d{i}").login() for i in range(200)]
        told: list[int] = []
        landed: set[str] = set()
        clients: list[socketio.AsyncClient] = []

        async def one(user: ChatClient) -> None:
            c = socketio.AsyncClient(reconnection=False)
            clients.append(c)

            async def on_reconnect(data):
                told.append(int(data["after_ms"]))
                await asyncio.sleep(data["after_ms"] / 1000)
                await c.disconnect()
                c2 = socketio.AsyncClient(reconnection=False)
                c2.on("ready", lambda d: landed.add(d["user"]["id"]))
                clients.append(c2)
                await c2.connect(url2, auth={"token": user.token}, transports=["websocket"], wait_timeout=10)

            c.on("reconnect", on_reconnect)
            await c.connect(url1, auth={"token": user.token}, transports=["websocket"], wait_timeout=10)

        for i in range(0, 200, 25):
            await asyncio.gather(*(one(u) for u in users[i:i + 25]))
        assert sum(1 for c in clients if c.connected) == 200

        started = time.monotonic()
        g1.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert ready_status(g1.ops_port) in (503, 0)
        code = await asyncio.get_running_loop().run_in_executor(None, g1.proc.wait, 20)
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 20
        while len(landed) < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for c in clients:
            if c.connected:
                await c.disconnect()

    assert code == 0, code
    assert elapsed < 15, elapsed
    assert len(told) == 200
    assert len(set(told)) > 1, "reconnects were not staggered"
    assert len(landed) == 200
    assert g2.alive
