"""With NATS stopped, commands answer `unavailable` within the request timeout and the
gateway keeps running; when NATS returns, sending works again without a restart."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import aiohttp

from libs.testing.client import ChatClient, guild_with_members


def livez(ops_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/livez", timeout=2) as r:
        return r.status


async def test_nats_down_answers_unavailable_then_recovers(own_stack):
    stack = own_stack()
    g1, g2 = stack.gateways
    async with aiohttp.ClientSession() as http:
        alice = await ChatClient(http, g1, "alice").login()
        bob = await ChatClient(http, g2, "bob").login()
        guild = await guild_with_members(alice, bob)
        a = await alice.connect()
        b = await bob.connect()
        ch = guild["text_channel"]
        assert (await a.call("message:send", {"channel_id": ch, "content": "before", "nonce": "n0"}))["ok"]

        stack.servers.nats.kill()
        started = time.monotonic()
        ack = await a.call("message:send", {"channel_id": ch, "content": "during", "nonce": "n1"}, timeout=15)
        elapsed = time.monotonic() - started
        assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
        assert elapsed < 3.0 + 1.5, elapsed  # CHAT_BUS_REQUEST_TIMEOUT_S plus slack
        for gw in stack.cluster.gateways:
            assert gw.alive and livez(gw.ops_port) == 200

        stack.servers.nats.start()
        deadline = time.monotonic() + 45
        while True:
            ack = await a.call("message:send", {"channel_id": ch, "content": "during", "nonce": "n1"}, timeout=15)
            if ack["ok"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert ack["ok"], ack
        assert ack["message"]["seq"] == 2  # the refused attempt stored nothing
        created = await b.wait_for("message:created", 2, timeout=15)
        assert [e["seq"] for e in created] == [1, 2]
        assert all(p.alive for p in stack.cluster.processes)
        await alice.close()
        await bob.close()
