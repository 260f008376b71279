"""A client that stops reading is told to sync and disconnected at the threshold, while
another client in the same room keeps receiving."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp

from libs.testing.client import ChatClient, guild_with_members


async def stalled_socket(url: str, token: str) -> socket.socket:
    """A raw Engine.IO websocket that completes CONNECT and then never reads again, with a
    tiny receive buffer so the server's writes back up quickly."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    s.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    s.settimeout(5)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(1)
    payload = b"40" + json.dumps({"token": token}).encode()
    header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + b"\x00\x00\x00\x00"
    s.sendall(header + payload)  # masked with a zero key
    return s


async def test_stalled_client_is_cut_off_and_others_keep_receiving(own_stack):
    stack = own_stack(CHAT_CLIENT_QUEUE_SOFT="20", CHAT_CLIENT_QUEUE_HARD="100",
                      CHAT_CLIENT_BUFFER_SOFT_BYTES="16384", CHAT_CLIENT_BUFFER_HARD_BYTES="65536")
    g1, _g2 = stack.gateways
    async with aiohttp.ClientSession() as http:
        sender = await ChatClient(http, g1, "sender").login()
        reader = await ChatClient(http, g1, "reader").login()
        stalled = await ChatClient(http, g1, "stalled").login()
        guild = await guild_with_members(sender, reader, stalled)
        ch = guild["text_channel"]
        s = await sender.connect()
        r = await reader.connect()
        raw = await stalled_socket(g1, stalled.token)
        ops = f"http://127.0.0.1:{stack.cluster.gateways[0].ops_port}"

        async def active() -> int:
            async with http.get(f"{ops}/metrics/socket") as resp:
                return int((await resp.json())["active_connections"])

        deadline = time.monotonic() + 10
        while await active() < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await active() == 3

        big = "x" * 1900
        sent = 0
        cut_at = None
        started = time.monotonic()
        while time.monotonic() - started < 60:
            acks = await asyncio.gather(*(s.call("message:send", {"channel_id": ch, "content": big,
                                                                  "nonce": f"n{sent + i}"}) for i in range(20)))
            assert all(a["ok"] for a in acks), acks
            sent += 20
            if await active() == 2:
                cut_at = sent
                break
        assert cut_at is not None, "the stalled client was never disconnected"
        await r.wait_for("message:created", sent, timeout=20)
        assert sorted(e["seq"] for e in r.events["message:created"]) == list(range(1, sent + 1))
        async with http.get(f"{ops}/metrics") as resp:
            text = await resp.text()
        assert "chat_gateway_slow_client_evicted_total 1.0" in text
        raw.close()
        await sender.close()
        await reader.close()
