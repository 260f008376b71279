"""The public port's own front: Engine.IO WebSocket connections without aiohttp.

Every connection on the gateway's public port starts with :class:`FrontProtocol`. It
reads the request head; a clean Engine.IO WebSocket request (``GET`` on the Engine.IO
path, ``transport=websocket``, a valid WebSocket handshake, an accepted origin) is
served by the protocol itself for the life of the connection. Anything else (long
polling, the HTTP API, a malformed or refused request) is handed, with the bytes read so
far, to aiohttp's request handler, which serves it exactly as before.

What a WebSocket connection costs is then one protocol object and its Engine.IO socket:
no parsed request object with its headers, no ``WebSocketResponse`` with its reader and
writer, no request-handler task and no coroutine chain waiting on the next frame (about
10 KB of aiohttp objects and frames per idle connection). Frames are parsed as they
arrive in ``data_received``; a connection's Engine.IO messages are handled in order, as
python-engineio does under python-socketio (see ``FastSocket.receive_nowait``); pings and
pongs are answered in place.

Sending is :class:`libs.sio.fast_transport.FrameSink`: pre-encoded frames, one transport
write per connection per event-loop pass.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import struct
import urllib.parse
from collections.abc import Callable
from typing import Any

from engineio import packet
from prometheus_client import Counter

from libs.sio.fast_transport import FRONT_KEY, FrameSink, packet_frame, spawn

log = logging.getLogger(__name__)

WS_CONNECTIONS = Counter("chat_gateway_ws_front_connections_total",
                         "Connections on the public port, by who served them (ws: this front; http: aiohttp)",
                         ["served_by"])
WS_ERRORS = Counter("chat_gateway_ws_front_errors_total",
                    "WebSocket connections closed by the front for what the peer sent or did not send",
                    ["kind"])

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 16 * 1024
_HEAD, _HANDSHAKE, _PROBE, _UPGRADE, _OPEN, _CLOSED = range(6)

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def unmask(payload: bytes, mask: bytes) -> bytes:
    """A client frame's payload XOR its 4-byte mask, as one big-integer operation in C."""
    n = len(payload)
    if n == 0:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def close_frame(code: int) -> bytes:
    return bytes((0x80 | _OP_CLOSE, 2)) + struct.pack("!H", code)


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]] | None:
    """Method, path, query string and WSGI-style ``HTTP_*`` headers of an HTTP/1.1 request
    head, or None when it is not a plain, well-formed one (aiohttp then answers it)."""
    lines = head.decode("latin-1").split("\r\n")  # latin-1 decodes any byte
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1":
        return None
    method, target, _ = parts
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        key = "HTTP_" + name.upper().replace("-", "_")
        value = value.strip()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return method, path, query, headers


class FrontProtocol(FrameSink, asyncio.Protocol):
    """One connection on the public port: a WebSocket served here, or handed to aiohttp."""

    __slots__ = ("_engine", "_http", "_state", "_buf", "_need", "_sock", "_timer", "_frag", "_frag_op",
                 "_frag_len")

    def __init__(self, engine: Any, http_factory: Callable[[], asyncio.BaseProtocol],
                 head_timeout_s: float = 10.0) -> None:
        FrameSink.__init__(self, engine.write_batcher)
        self._engine = engine
        self._http: Callable[[], asyncio.BaseProtocol] | None = http_factory
        self._state = _HEAD
        self._buf = bytearray()  # bytes received and not used yet
        self._need = 0  # how many the frame being received needs in all
        self._sock: Any = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            head_timeout_s, self._head_timeout)
        self._frag: list[bytes] | None = None
        self._frag_op = 0
        self._frag_len = 0

    # -- the connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        state, self._state = self._state, _CLOSED
        sock, self._sock = self._sock, None
        self._pending = []
        if sock is None:
            return
        if state in (_PROBE, _UPGRADE):
            sock.upgrading = False  # the socket goes on polling
        elif sock.ws is self:
            sock.closed_by_peer(self._engine.reason.TRANSPORT_CLOSE)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def data_received(self, data: bytes) -> None:
        if _PROBE <= self._state <= _OPEN:
            if self._buf:
                # a frame still arriving: appended in place, parsed once it is whole
                self._buf += data
                if len(self._buf) < self._need:
                    return
                data, self._buf = bytes(self._buf), bytearray()
            self._read_frames(data)
            return
        if self._buf:
            data = bytes(self._buf) + data
            self._buf = bytearray()
        if self._state == _HEAD:
            self._read_head(data)
        elif self._state == _HANDSHAKE:
            self._buf = bytearray(data)  # frames sent before the 101 are read after it
            if len(data) > self._engine.max_http_buffer_size:
                self._fail("early_data", 1009)

    # -- the request head ----------------------------------------------------------------------
    def _head_timeout(self) -> None:
        self._timer = None
        if self._state == _HEAD:
            WS_ERRORS.labels("head_timeout").inc()
            log.info("closing a connection that sent no complete request head in time")
            self._state = _CLOSED
            if self.transport is not None:
                self.transport.close()
        elif self._state in (_HANDSHAKE, _PROBE, _UPGRADE):
            self._fail("upgrade_timeout", 1002)  # the Engine.IO handshake did not complete in time

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _read_head(self, data: bytes) -> None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > _MAX_HEAD:
                self._hand_off(data)  # aiohttp refuses it with its own status
            else:
                self._buf = bytearray(data)
            return
        served = self._websocket_environ(data[:end])
        if served is None:
            self._hand_off(data)
            return
        self._state = _HANDSHAKE
        self._buf = bytearray(data[end + 4:])
        WS_CONNECTIONS.labels("ws").inc()
        spawn(self._handshake(*served))

    def _websocket_environ(self, head: bytes) -> tuple[dict[str, Any], str | None] | None:
        """The environ python-engineio reads and the session to upgrade (None for a new
        one), for a request this front serves; else None."""
        engine = self._engine
        parsed = parse_head(head)
        if parsed is None:
            return None
        method, path, query, headers = parsed
        if method != "GET" or path.rstrip("/") != engine.front_path:
            return None
        if headers.get("HTTP_UPGRADE", "").lower() != "websocket" or \
                "upgrade" not in (s.strip() for s in headers.get("HTTP_CONNECTION", "").lower().split(",")):
            return None
        if headers.get("HTTP_SEC_WEBSOCKET_VERSION") != "13":
            return None
        key = headers.get("HTTP_SEC_WEBSOCKET_KEY", "")
        try:
            if len(base64.b64decode(key, validate=True)) != 16:
                return None
        except ValueError:
            return None
        q = urllib.parse.parse_qs(query)
        if q.get("transport") != ["websocket"] or "j" in q or \
                ("sid" not in q and q.get("EIO") != ["4"]):
            return None
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "RAW_URI": f"{path}?{query}" if query else path, "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": str(peer[0]) if peer else "unknown",
            **headers,
        }
        environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
        if engine.cors_allowed_origins != []:
            origin = environ.get("HTTP_ORIGIN")
            if origin:
                allowed = engine._cors_allowed_origins(environ)
                if allowed is not None and origin not in allowed:
                    return None  # aiohttp's path refuses it, with python-engineio's answer
        environ[FRONT_KEY] = self
        return environ, q["sid"][0] if "sid" in q else None

    def _hand_off(self, data: bytes) -> None:
        """Give the connection, and what it sent so far, to aiohttp."""
        self._cancel_timer()
        factory, self._http = self._http, None
        self._state = _CLOSED
        transport = self.transport
        if factory is None or transport is None or transport.is_closing():
            return
        WS_CONNECTIONS.labels("http").inc()
        proto = factory()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if data:
            proto.data_received(data)  # type: ignore[attr-defined]

    async def _handshake(self, environ: dict[str, Any], sid: str | None) -> None:
        """Run python-engineio's connect (or the upgrade of session ``sid``) for this
        request; it calls :meth:`accept` when it takes the WebSocket."""
        engine = self._engine
        response: Any = None
        try:
            if sid is None:
                response = await engine._handle_connect(environ, "websocket")
            else:
                sock = engine.sockets.get(sid)
                if sock is None or sock.closed or not sock.connected or sock.upgraded or sock.upgrading:
                    response = engine._bad_request("Invalid session")
                else:
                    response = await sock.handle_get_request(environ)
        except Exception:
            log.exception("engine.io websocket handshake failed")
            response = engine._bad_request("handshake failed")
        finally:
            environ.pop(FRONT_KEY, None)
        if self._state == _HANDSHAKE:  # refused: answer in HTTP and close
            self._state = _CLOSED
            self._cancel_timer()
            self._http_answer(response)

    def _http_answer(self, response: Any) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        status = "400 BAD REQUEST"
        body = b""
        if isinstance(response, dict):
            status = str(response.get("status", status))
            raw = response.get("response", b"")
            body = raw.encode() if isinstance(raw, str) else bytes(raw or b"")
        t.write(b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (status.encode("latin-1"), len(body), body))
        t.close()

    # -- the WebSocket ------------------------------------------------------------------------
    def accept(self, sock: Any, environ: dict[str, Any]) -> None:
        """Called by the Engine.IO socket that takes this WebSocket: send the 101, then
        either write directly (a new connection) or run the upgrade probe (a polling one)."""
        t = self.transport
        if self._state != _HANDSHAKE or t is None or t.is_closing():
            return
        t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept_key(environ["HTTP_SEC_WEBSOCKET_KEY"]).encode())
        self._sock = sock
        if sock.connected:  # an upgrade from polling: the probe, then UPGRADE
            sock.upgrading = True
            self._state = _PROBE
        else:
            self._cancel_timer()
            sock.connected = True
            sock.upgraded = True
            self._state = _OPEN
            sock._go_direct(self)
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            self._read_frames(data)

    def _read_frames(self, data: bytes) -> None:
        max_size = self._engine.max_http_buffer_size
        n_data = len(data)
        off = 0
        self._need = 0
        while self._state not in (_CLOSED, _HANDSHAKE):
            if n_data - off < 2:
                break
            b0 = data[off]
            b1 = data[off + 1]
            op = b0 & 0x0F
            length = b1 & 0x7F
            pos = off + 2
            if b0 & 0x70 or not b1 & 0x80:
                self._fail("bad_frame", 1002)  # reserved bits (no extension), or an unmasked client frame
                return
            if length == 126:
                if n_data - pos < 2:
                    break
                length = int.from_bytes(data[pos:pos + 2], "big")
                pos += 2
            elif length == 127:
                if n_data - pos < 8:
                    break
                length = int.from_bytes(data[pos:pos + 8], "big")
                pos += 8
            if op >= 0x8 and (length > 125 or not b0 & 0x80):
                self._fail("bad_frame", 1002)
                return
            if length > max_size or self._frag_len + length > max_size:
                self._fail("too_big", 1009)
                return
            end = pos + 4 + length
            if n_data < end:
                self._need = end - off
                break
            payload = unmask(data[pos + 4:end], data[pos:pos + 4])
            off = end
            self._frame(b0 & 0x80, op, payload)
        if off < n_data and self._state != _CLOSED:
            self._buf = bytearray(data[off:])

    def _frame(self, fin: int, op: int, payload: bytes) -> None:
        if op >= 0x8:
            if op == _OP_PING:
                self.write(bytes((0x80 | _OP_PONG, len(payload))) + payload)
            elif op == _OP_CLOSE:
                self._closed_by_peer(payload)
            elif op != _OP_PONG:
                self._fail("bad_frame", 1002)
            return
        if op == _OP_CONT:
            if self._frag is None:
                self._fail("bad_frame", 1002)
                return
            self._frag.append(payload)
            self._frag_len += len(payload)
            if not fin:
                return
            op, payload = self._frag_op, b"".join(self._frag)
            self._frag, self._frag_len = None, 0
        elif self._frag is not None:
            self._fail("bad_frame", 1002)  # a new message inside a fragmented one
            return
        elif not fin:
            self._frag, self._frag_op, self._frag_len = [payload], op, len(payload)
            return
        if op == _OP_TEXT:
            try:
                message: str | bytes = payload.decode("utf-8")
            except UnicodeDecodeError:
                self._fail("bad_utf8", 1007)
                return
        elif op == _OP_BINARY:
            message = payload
        else:
            self._fail("bad_frame", 1002)
            return
        self._message(message)

    def _message(self, data: str | bytes) -> None:
        sock = self._sock
        if sock is None or sock.closed:
            return  # a closed socket reads nothing more (its WebSocket is being closed)
        try:
            pkt = packet.Packet(encoded_packet=data)
        except Exception:
            self._fail("bad_packet", 1003)
            return
        state = self._state
        if state == _OPEN:
            sock.receive_nowait(pkt)
        elif state == _PROBE:
            if pkt.packet_type != packet.PING or pkt.data != "probe":
                self._fail("bad_probe", 1002)
                return
            self.write(packet_frame(packet.Packet(packet.PONG, data="probe")))
            sock.queue.put_nowait(packet.Packet(packet.NOOP))  # ends the pending poll
            self._state = _UPGRADE
        elif state == _UPGRADE:
            if pkt.packet_type != packet.UPGRADE:
                self._fail("bad_probe", 1002)
                return
            self._cancel_timer()
            sock.upgraded = True
            sock.upgrading = False
            self._state = _OPEN
            if sock.closed:
                self.drop()
                return
            sock._go_direct(self)

    def _closed_by_peer(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
        self._close(code if code in (1000, 1001) else 1000)  # the peer's close, echoed

    def _fail(self, kind: str, code: int) -> None:
        WS_ERRORS.labels(kind).inc()
        log.info("closing a WebSocket: %s", kind)
        self._close(code)

    def _close(self, code: int) -> None:
        """End the connection from this side: what is queued for it, a close frame, then
        the transport's close. Nothing is read after it."""
        self._state = _CLOSED
        self._frag = None
        self._cancel_timer()
        t = self.transport
        if t is not None and not t.is_closing():
            self.write(close_frame(code))
            self.flush()
            t.close()

    # -- closing from the server side (FastSocket.close) --------------------------------------
    async def close(self) -> None:
        self.drop()

    def drop(self) -> None:
        if self._state != _CLOSED:
            self._close(1000)


async def serve(engine: Any, http_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, *,
                path: str = "socket.io", backlog: int = 1024, head_timeout_s: float = 10.0) -> asyncio.AbstractServer:
    """Listen on ``host:port`` with :class:`FrontProtocol` in front of aiohttp's handler;
    ``path`` is Engine.IO's (python-socketio's ``socketio_path``)."""
    engine.front_path = "/" + path.strip("/")  # FastEngineServer.front_path
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: FrontProtocol(engine, http_factory, head_timeout_s),
                                    host, port, reuse_address=True, backlog=backlog)


def close_all(engine: Any) -> None:
    """Close the WebSockets this front serves (at shutdown; aiohttp closes its own)."""
    for sock in list(engine.sockets.values()):
        ws = getattr(sock, "ws", None)
        if isinstance(ws, FrontProtocol):
            ws.drop()
