"""The public port's WebSocket front (libs/sio/ws_server.py), spoken to over raw TCP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from urllib.parse import urlparse

import pytest

from libs.sio.ws_server import accept_key
from libs.testing.client import ChatClient, uid
from libs.testing.fixtures import Stack
from libs.testing.wire_fuzz import active_connections, metric_total

WS_PATH = "/socket.io/?EIO=4&transport=websocket"


def ops_url(cluster: Stack, i: int = 0) -> str:
    return f"http://127.0.0.1:{cluster.cluster.gateways[i].ops_port}"


def client_frame(op: int, payload: bytes, fin: bool = True, masked: bool = True, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | op
    if n < 126:
        head = bytes((first, (0x80 if masked else 0) | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWs:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: str,
                 headers: dict[str, str]) -> None:
        self.reader, self.writer, self.status, self.headers = reader, writer, status, headers

    @classmethod
    async def open(cls, base: str, path: str = WS_PATH, key: str | None = None) -> RawWs:
        u = urlparse(base)
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        key = key or base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
        lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        return cls(reader, writer, lines[0], headers)

    def send(self, op: int, payload: bytes, **kw: object) -> None:
        self.writer.write(client_frame(op, payload, **kw))  # type: ignore[arg-type]

    def text(self, s: str) -> None:
        self.send(0x1, s.encode())

    async def frame(self, timeout: float = 5) -> tuple[int, bytes]:
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        assert not b1 & 0x80, "server frames are not masked"
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def next_text(self, timeout: float = 5) -> str:
        while True:
            op, payload = await self.frame(timeout)
            if op == 0x1:
                text = payload.decode()
                if text != "2":  # an Engine.IO ping: answered, not returned
                    return text
                self.text("3")

    async def until(self, prefix: str, timeout: float = 5) -> str:
        """The next text packet starting with ``prefix`` (events such as presence may come between)."""
        while not (text := await self.next_text(timeout)).startswith(prefix):
            pass
        return text

    async def closed(self, timeout: float = 5) -> int | None:
        """The close code the server sent, after which it closed the connection."""
        code = None
        while True:
            try:
                op, payload = await self.frame(timeout)
            except asyncio.IncompleteReadError:
                return code
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0]

    def close(self) -> None:
        self.writer.close()


async def test_handshake_engineio_and_socketio_over_the_front(http, cluster: Stack):
    before = await metric_total(ops_url(cluster), "chat_gateway_ws_front_connections_total", served_by="ws")
    user = await ChatClient(http, cluster.gateways[0], uid("front")).login()
    key = base64.b64encode(os.urandom(16)).decode()
    ws = await RawWs.open(cluster.gateways[0], key=key)
    assert ws.status == "HTTP/1.1 101 Switching Protocols"
    assert ws.headers["sec-websocket-accept"] == accept_key(key)
    assert "sec-websocket-extensions" not in ws.headers  # no permessage-deflate
    opened = await ws.next_text()
    assert opened.startswith("0{") and json.loads(opened[1:])["upgrades"] == []
    # A WebSocket ping is answered with its payload.
    ws.send(0x9, b"hello")
    assert await ws.frame() == (0xA, b"hello")
    # Socket.IO CONNECT in two fragments (text, then a continuation).
    connect = "40" + json.dumps({"token": user.token})
    ws.send(0x1, connect[:5].encode(), fin=False)
    ws.send(0x0, connect[5:].encode())
    reply = await ws.until("40")
    assert reply.startswith("40{") and "sid" in json.loads(reply[2:]), reply
    await ws.until('42["ready"')
    # An event with an ack, answered on the same WebSocket.
    ws.text('421["sync",{"channels":{}}]')
    ack = await ws.until("43")
    assert ack.startswith("431[") and json.loads(ack[3:])[0]["ok"], ack
    # The client's close frame is echoed, then the server closes.
    ws.send(0x8, struct.pack("!H", 1000))
    assert await ws.closed() == 1000
    ws.close()
    assert await metric_total(ops_url(cluster), "chat_gateway_ws_front_connections_total", served_by="ws") > before


async def test_polling_session_upgrades_through_the_front(http, cluster: Stack):
    base = cluster.gateways[0]
    async with http.get(f"{base}/socket.io/?EIO=4&transport=polling") as r:
        assert r.status == 200
        opened = json.loads((await r.text())[1:])
    sid = opened["sid"]
    assert opened["upgrades"] == ["websocket"]
    ws = await RawWs.open(base, f"{WS_PATH}&sid={sid}")
    assert ws.status.startswith("HTTP/1.1 101")
    ws.text("2probe")
    assert await ws.next_text() == "3probe"
    async with http.get(f"{base}/socket.io/?EIO=4&transport=polling&sid={sid}") as r:
        assert await r.text() == "6"  # the pending poll ends with NOOP
    ws.text("5")
    user = await ChatClient(http, base, uid("upg")).login()
    ws.text("40" + json.dumps({"token": user.token}))
    assert (await ws.until("40")).startswith("40{")
    ws.close()


async def test_upgrade_with_an_unknown_session_is_refused(cluster: Stack):
    ws = await RawWs.open(cluster.gateways[0], f"{WS_PATH}&sid=nope")
    assert ws.status.startswith("HTTP/1.1 400")
    ws.close()


async def test_a_frame_that_arrives_in_many_pieces(http, cluster: Stack):
    """A large frame dribbled in small writes is read once whole, and the frames around it too."""
    user = await ChatClient(http, cluster.gateways[0], uid("drip")).login()
    ws = await RawWs.open(cluster.gateways[0])
    assert (await ws.next_text()).startswith("0{")
    ws.text("40" + json.dumps({"token": user.token}))
    await ws.until('42["ready"')
    big = '421["sync",{"channels":{' + ",".join(f'"{i}":0' for i in range(1, 400)) + "}}]"
    frame = client_frame(0x1, big.encode()) + client_frame(0x9, b"after")
    assert len(frame) > 3000
    for i in range(0, len(frame), 97):
        ws.writer.write(frame[i:i + 97])
        await ws.writer.drain()
    pong, ack = None, None
    while pong is None or ack is None:
        op, payload = await ws.frame()
        if op == 0xA:
            pong = payload
        elif op == 0x1 and payload.startswith(b"431["):
            ack = json.loads(payload[3:])[0]
    assert pong == b"after"
    assert ack["ok"] and len(ack["channels"]) == 399, ack
    ws.close()


async def test_packets_of_a_connection_are_handled_in_order(http, cluster: Stack):
    """A refused CONNECT, an accepted one and an event, sent in one write: each is handled
    after the one before it (python-socketio's Engine.IO runs without async handlers)."""
    user = await ChatClient(http, cluster.gateways[0], uid("order")).login()
    ws = await RawWs.open(cluster.gateways[0])
    assert (await ws.next_text()).startswith("0{")
    ws.writer.write(client_frame(0x1, b"40") + client_frame(0x1, ("40" + json.dumps({"token": user.token})).encode())
                    + client_frame(0x1, b'42999["sync",{"channels":{}}]'))
    refused = await ws.until("4")
    assert refused.startswith("44") and "unauthorized" in refused, refused
    assert (await ws.until("40")).startswith("40{")
    ack = await ws.until("43999")
    assert json.loads(ack[5:]) == [{"ok": True, "channels": {}}]
    ws.close()


async def test_a_connection_that_ends_during_its_connect_leaves_no_session(http, cluster: Stack):
    """The close of a connection whose CONNECT is still being handled comes after it: the
    session it opened is closed again, none is left behind. (A connect still waiting for its
    `ready` or presence batch counts as active until it ends: up to two bus timeouts each
    on a busy shared cluster, so the wait below is longer than that.)"""
    ops = ops_url(cluster)
    before = await active_connections(ops)
    user = await ChatClient(http, cluster.gateways[0], uid("gone")).login()
    for _ in range(20):
        ws = await RawWs.open(cluster.gateways[0])
        assert (await ws.next_text()).startswith("0{")
        ws.text("40" + json.dumps({"token": user.token}))
        await ws.writer.drain()
        ws.writer.transport.abort()
    for _ in range(300):
        if await active_connections(ops) <= before:
            break
        await asyncio.sleep(0.1)
    assert await active_connections(ops) <= before


@pytest.mark.parametrize("kind,frame,code", [
    ("bad_frame", client_frame(0x1, b"40", masked=False), 1002),  # a client frame must be masked
    ("bad_frame", client_frame(0x0, b"x"), 1002),  # a continuation with nothing to continue
    ("bad_frame", bytes((0x80 | 0x40 | 0x1, 0x80)) + os.urandom(4), 1002),  # RSV1 without an extension
    ("too_big", client_frame(0x1, b"", length=10_000_000), 1009),  # refused from its header
    ("bad_utf8", client_frame(0x1, b"4\xff\xfe"), 1007),
])
async def test_bad_frames_close_the_connection_and_are_counted(cluster: Stack, kind: str, frame: bytes, code: int):
    before = await metric_total(ops_url(cluster), "chat_gateway_ws_front_errors_total", kind=kind)
    ws = await RawWs.open(cluster.gateways[0])
    assert (await ws.next_text()).startswith("0{")
    ws.writer.write(frame)
    assert await ws.closed() == code
    ws.close()
    assert await metric_total(ops_url(cluster), "chat_gateway_ws_front_errors_total", kind=kind) == before + 1


async def test_a_request_head_that_never_ends_is_closed(cluster: Stack):
    """CHAT_CONNECT_TIMEOUT_S=2 in the test cluster."""
    before = await metric_total(ops_url(cluster), "chat_gateway_ws_front_errors_total", kind="head_timeout")
    u = urlparse(cluster.gateways[0])
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    writer.write(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n")
    assert await asyncio.wait_for(reader.read(), 8) == b""
    writer.close()
    assert await metric_total(ops_url(cluster), "chat_gateway_ws_front_errors_total", kind="head_timeout") == before + 1


async def test_http_requests_on_the_port_are_served_by_aiohttp(cluster: Stack):
    """Keep-alive HTTP (two requests on one connection) and a head split over two writes."""
    before = await metric_total(ops_url(cluster), "chat_gateway_ws_front_connections_total", served_by="http")
    u = urlparse(cluster.gateways[0])
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    writer.write(b"GET /api/v1/openapi.json HTTP/1.1\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"Host: x\r\n\r\n")
    for _ in range(2):
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
        assert head.startswith("HTTP/1.1 200"), head
        length = int(next(ln.split(":")[1] for ln in head.split("\r\n") if ln.lower().startswith("content-length")))
        assert json.loads(await reader.readexactly(length))["openapi"]
        writer.write(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
    writer.close()
    assert await metric_total(ops_url(cluster), "chat_gateway_ws_front_connections_total", served_by="http") > before
