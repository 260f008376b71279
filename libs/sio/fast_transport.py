"""Engine.IO below python-socketio, rebuilt for the send path of a chat gateway.

python-engineio gives every WebSocket connection a writer task fed by an
``asyncio.Queue``, a task per received frame (``wait_for``), a sleeping task per
ping interval, and aiohttp's default permessage-deflate, which compresses every frame
separately for every recipient. Here, once a socket is on WebSocket:

* packets are written straight to the connection's transport as WebSocket frames,
  without a task or a queue; a broadcast builds its frame once (server frames are
  unmasked, so the same bytes are valid on every connection) and hands it to each
  recipient; the frames of one event-loop pass go out in one write per connection;
* the read loop awaits frames directly (no task per frame); pings are timer handles,
  not tasks; one service task checks ping timeouts for all sockets;
* permessage-deflate is not negotiated (Socket.IO's own servers default to the same);
* what a socket has not yet taken off the wire is measured in bytes buffered by its
  transport, which is what the gateway's slow-client limits look at.

Long-polling sockets, and a socket until its upgrade to WebSocket completes, keep
python-engineio's queue unchanged; packets queued before the upgrade are flushed to
the WebSocket, in order, before anything is written directly.
"""

from __future__ import annotations

import asyncio
import json as _stdlib_json
import logging
import struct
import time
from collections import deque
from typing import Any

import engineio
import orjson
import socketio.packet
from aiohttp import WSMsgType, web
from engineio import async_socket, exceptions, packet
from engineio.json import loads as _engineio_loads
from prometheus_client import Counter

from libs.resilience.tasks import being_cancelled

log = logging.getLogger(__name__)

INBOX_CANCELLED = Counter("chat_sio_packet_handling_cancelled_total",
                          "Packets whose handling was ended by a cancellation from another task")

_OP_TEXT = 0x1
_OP_BINARY = 0x2

# The environ key under which :mod:`libs.sio.ws_server` offers its connection to the
# Engine.IO socket that takes the WebSocket.
FRONT_KEY = "chat.ws_front"
_tasks: set[asyncio.Future[Any]] = set()  # the loop holds tasks weakly


def spawn(coro: Any) -> None:
    """Run ``coro`` as a task kept referenced until it ends."""
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def ws_frame(payload: bytes, binary: bool = False) -> bytes:
    """One unmasked, final WebSocket frame (what a server sends) carrying ``payload``."""
    first = 0x80 | (_OP_BINARY if binary else _OP_TEXT)
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def packet_frame(pkt: packet.Packet) -> bytes:
    """The WebSocket frame of one Engine.IO packet."""
    encoded = pkt.encode()
    if isinstance(encoded, bytes):
        return ws_frame(encoded, binary=True)
    return ws_frame(encoded.encode())


class FastJson:
    """The ``json`` module python-socketio encodes and decodes packets with: orjson, and
    the standard library (with python-engineio's integer guard) for what orjson refuses,
    such as lone surrogates. orjson reads integers beyond 64 bits as floats; the event
    schemas then refuse them as ``invalid``."""

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        try:
            return orjson.dumps(obj).decode()
        except TypeError:
            kwargs.setdefault("separators", (",", ":"))
            return _stdlib_json.dumps(obj, **kwargs)

    @staticmethod
    def loads(s: str | bytes, **kwargs: Any) -> Any:
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            return _engineio_loads(s, **kwargs)


class FastPacket(socketio.packet.Packet):
    """A Socket.IO packet whose "does it hold bytes?" check, made for every packet sent, is
    one orjson pass in C instead of python-socketio's recursive walk in Python (a ``ready``
    with a hundred presences took a millisecond). orjson refuses bytes, so what it encodes
    holds none; what it refuses for another reason is walked as before."""

    @classmethod
    def data_is_binary(cls, data: Any) -> bool:
        try:
            orjson.dumps(data)
        except TypeError:
            return bool(super().data_is_binary(data))
        return False


class _NoQueue:
    """Stands in for a socket's ``asyncio.Queue`` once it writes directly (nothing is
    queued any more): one shared instance instead of a queue, its deques and its event
    per connection."""

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def put_nowait(self, item: Any) -> None:
        raise RuntimeError("a direct socket has no queue")

    async def put(self, item: Any) -> None:
        raise RuntimeError("a direct socket has no queue")

    def get_nowait(self) -> Any:
        raise asyncio.QueueEmpty

    async def join(self) -> None:
        return None


NO_QUEUE = _NoQueue()


class WriteBatcher:
    """Coalesces the frames written to each connection during one event-loop pass into
    one transport write per connection, made at the end of the pass (like a corked
    socket): a burst of broadcasts costs one system call per recipient, not one per
    frame per recipient."""

    def __init__(self) -> None:
        self._dirty: list[FrameSink] = []
        self._scheduled = False

    def mark(self, ws: FrameSink) -> None:
        self._dirty.append(ws)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for ws in dirty:
            ws.flush()


class FrameSink:
    """Frames written to one connection's transport, batched per event-loop pass; what
    the peer has not taken yet is measured in bytes."""

    __slots__ = ("transport", "_pending", "_pending_bytes", "_batcher")

    def __init__(self, batcher: WriteBatcher) -> None:
        self.transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._batcher = batcher

    def write(self, frame: bytes) -> None:
        if not self._pending:
            self._batcher.mark(self)
        self._pending.append(frame)
        self._pending_bytes += len(frame)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        t = self.transport
        if not pending or t is None or t.is_closing():
            return
        t.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def buffered(self) -> int:
        t = self.transport
        return self._pending_bytes + (t.get_write_buffer_size() if t is not None else 0)

    def drop(self) -> None:
        """End the connection at once (the socket was aborted); the default leaves it to the
        read loop, which ends with the socket."""

    async def close(self) -> None:
        raise NotImplementedError


class DirectWebSocket(FrameSink):
    """python-engineio's aiohttp WebSocket driver, without compression, writing frames to
    the transport itself (batched per event-loop pass). Serves the WebSocket requests that
    :mod:`libs.sio.ws_server` hands to aiohttp."""

    __slots__ = ("handler", "server", "_sock")

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(server.write_batcher)
        self.handler = handler
        self.server = server
        self._sock: web.WebSocketResponse | None = None

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request: web.Request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self.transport = request.transport  # type: ignore[assignment]
        await self.handler(self)
        return self._sock

    async def close(self) -> None:
        self.flush()
        if self._sock is not None:
            await self._sock.close()

    async def wait(self, timeout: float | None = None) -> str | bytes:
        assert self._sock is not None
        msg = await self._sock.receive(timeout=timeout)
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            return msg.data  # type: ignore[no-any-return]
        raise OSError(f"websocket {msg.type.name.lower()}")


class FastSocket(async_socket.AsyncSocket):
    """An Engine.IO socket that writes directly to its WebSocket once it has one."""

    last_ping: float | None
    connected: bool
    queue: Any  # asyncio.Queue until the socket writes directly, then NO_QUEUE

    def __init__(self, server: Any, sid: str) -> None:
        super().__init__(server, sid)
        self.ws: FrameSink | None = None  # set once packets go straight to the wire
        self._ping_handle: asyncio.TimerHandle | None = None
        self._inbox: deque[Any] | None = None  # packets waiting for the one before them

    # -- sending ---------------------------------------------------------------------------
    @property
    def direct(self) -> bool:
        return self.ws is not None

    def buffered(self) -> int:
        """Bytes written to this socket that its peer has not taken yet (0 while polling)."""
        return self.ws.buffered() if self.ws is not None else 0

    def send_frame(self, frame: bytes, pkt: packet.Packet) -> None:
        """Send a pre-encoded packet without awaiting: ``frame`` when on WebSocket, else
        ``pkt`` through the polling queue."""
        if self.closed:
            return
        if self.ws is not None:
            self.ws.write(frame)
        else:
            self.queue.put_nowait(pkt)

    def send_nowait(self, pkt: packet.Packet) -> None:
        if self.closed:
            return
        if self.ws is not None:
            self.ws.write(packet_frame(pkt))
        else:
            self.queue.put_nowait(pkt)

    async def send(self, pkt: packet.Packet) -> None:
        if await self.check_ping_timeout():
            self.send_nowait(pkt)

    async def receive(self, pkt: packet.Packet) -> None:
        if pkt.packet_type == packet.MESSAGE:
            await self.server._trigger_event("message", self.sid, pkt.data, run_async=self.server.async_handlers)
        elif pkt.packet_type == packet.PONG:
            self.schedule_ping()
        elif pkt.packet_type == packet.UPGRADE:
            await self.send(packet.Packet(packet.NOOP))
        elif pkt.packet_type == packet.CLOSE:
            await self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT)
        else:
            raise exceptions.UnknownPacketError()

    def receive_nowait(self, pkt: packet.Packet) -> None:
        """:meth:`receive` for a WebSocket read in ``data_received`` (libs.sio.ws_server).

        A connection's packets are handled one after the other, as python-engineio does
        under python-socketio (which runs it with ``async_handlers=False``): a second CONNECT
        waits for the first's answer, an event sent right after CONNECT finds the namespace
        connected, a close comes after what was sent before it. They wait in the socket's
        inbox, drained by a task that exists only while there is something to handle.
        PONGs are answered at once; unknown packets are ignored."""
        t = pkt.packet_type
        if t == packet.MESSAGE:
            self._enqueue(pkt.data)
        elif t == packet.PONG:
            self.schedule_ping()
        elif t == packet.CLOSE:
            self.closed_by_peer(self.server.reason.CLIENT_DISCONNECT)
        elif t == packet.UPGRADE:
            self.send_nowait(packet.Packet(packet.NOOP))

    def closed_by_peer(self, reason: Any) -> None:
        """The client closed (a CLOSE packet, or its connection ended): close the socket after
        the packets it sent before, so a CONNECT being handled ends before its disconnect."""
        self._enqueue(_Closed(reason))

    def _enqueue(self, item: Any) -> None:
        inbox = self._inbox
        if inbox is None:
            self._inbox = inbox = deque((item,))
            spawn(self._drain_inbox(inbox))
        else:
            inbox.append(item)

    async def _drain_inbox(self, inbox: deque[Any]) -> None:
        handler = self.server.handlers.get("message")
        try:
            while inbox:
                item = inbox.popleft()
                try:
                    if isinstance(item, _Closed):
                        await self.close(wait=False, abort=True, reason=item.reason)
                    elif handler is not None and not self.closed:
                        await handler(self.sid, item)
                except asyncio.CancelledError:
                    if being_cancelled():
                        raise  # this task is being stopped
                    # A future cancelled by someone else (a library, a stopping batch) ended
                    # this packet's handling; the packets after it, a close among them,
                    # are still handled: a lost close would leave its session behind.
                    INBOX_CANCELLED.inc()
                    log.warning("engine.io packet handling was cancelled by another task", extra={"sid": self.sid})
                except Exception:
                    log.exception("engine.io packet handling failed")
        finally:
            self._inbox = None

    # -- pings: a timer handle per socket, not a task ----------------------------------------
    def schedule_ping(self) -> None:
        if self.last_ping:
            self.last_ping = None
            self._ping_handle = asyncio.get_running_loop().call_later(self.server.ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_handle = None
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.send_nowait(packet.Packet(packet.PING))

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        was_open = not self.closed and not self.closing
        await super().close(wait=wait, abort=abort, reason=reason)
        if was_open:
            if self._ping_handle is not None:
                self._ping_handle.cancel()
                self._ping_handle = None
            ws, self.ws = self.ws, None
            if ws is not None:
                if abort:
                    ws.drop()
                else:
                    # CLOSE is on the wire; end the WebSocket too (the read loop then ends).
                    spawn(ws.close())

    # -- the WebSocket transport -------------------------------------------------------------
    async def _upgrade_websocket(self, environ: dict[str, Any]) -> Any:
        if self.upgraded:
            raise OSError("Socket has been upgraded already")
        front = environ.get(FRONT_KEY)
        if front is not None:  # the connection is libs.sio.ws_server's: it reads the frames
            front.accept(self, environ)
            return None
        return await DirectWebSocket(self._websocket_handler, self.server)(environ)

    def _go_direct(self, ws: FrameSink) -> None:
        """Flush what was queued before the WebSocket, in order, then write directly."""
        while True:
            try:
                pkt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            self.queue.task_done()
            # A NOOP put to end a poll that was not pending is not for the WebSocket.
            if pkt is not None and pkt.packet_type != packet.NOOP:
                ws.write(packet_frame(pkt))
        self.ws = ws
        self.queue = NO_QUEUE

    async def _websocket_handler(self, ws: DirectWebSocket) -> None:  # type: ignore[override]
        max_size = self.server.max_http_buffer_size
        read_timeout = self.server.ping_interval + self.server.ping_timeout
        if self.connected:
            # an upgrade from polling: probe, then UPGRADE
            self.upgrading = True
            try:
                data = await ws.wait(read_timeout)
            except (TimeoutError, OSError):
                self.upgrading = False
                return
            probe = packet.Packet(encoded_packet=data)
            if probe.packet_type != packet.PING or probe.data != "probe":
                self.upgrading = False
                return
            ws.write(packet_frame(packet.Packet(packet.PONG, data="probe")))
            await self.queue.put(packet.Packet(packet.NOOP))  # ends the pending poll
            try:
                data = await ws.wait(read_timeout)
            except (TimeoutError, OSError):
                self.upgrading = False
                return
            if packet.Packet(encoded_packet=data).packet_type != packet.UPGRADE:
                self.upgrading = False
                return
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True
        if self.closed:
            return
        self._go_direct(ws)
        try:
            while not self.closed:
                try:
                    # no timeout here: the service task closes sockets whose pong is late
                    data = await ws.wait()
                except (TimeoutError, OSError):
                    break
                except Exception:
                    break
                if len(data) > max_size:
                    break
                try:
                    await self.receive(packet.Packet(encoded_packet=data))
                except exceptions.UnknownPacketError:
                    pass
                except exceptions.SocketIsClosedError:
                    break
                except Exception:
                    log.exception("engine.io receive error")
        finally:
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)


class _Closed:
    """In a socket's inbox: the client closed, after the packets before it."""

    __slots__ = ("reason",)

    def __init__(self, reason: Any) -> None:
        self.reason = reason


class FastEngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server with :class:`FastSocket` sockets and one light service task."""

    start_service_task: bool
    front_path = "/socket.io"  # the Engine.IO path libs.sio.ws_server serves (set by its serve())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_batcher = WriteBatcher()

    async def _handle_connect(self, environ: dict[str, Any], transport: str, jsonp_index: Any = None) -> Any:
        if self.start_service_task:
            self.start_service_task = False
            self.service_task_handle = self.start_background_task(self._service_task)
        sid = self.generate_id()
        s = FastSocket(self, sid)
        self.sockets[sid] = s
        await s.send(packet.Packet(packet.OPEN, {
            "sid": sid,
            "upgrades": self._upgrades(sid, transport),
            "pingTimeout": int(self.ping_timeout * 1000),
            "pingInterval": int(self.ping_interval + self.ping_interval_grace_period) * 1000,
            "maxPayload": self.max_http_buffer_size,
        }))
        ret = await self._trigger_event("connect", sid, environ, run_async=False)
        if ret is not None and ret is not True:
            del self.sockets[sid]
            return self._unauthorized(ret or None)
        s.schedule_ping()
        if transport == "websocket":
            ret = await s.handle_get_request(environ)
            if s.closed and sid in self.sockets:
                del self.sockets[sid]
            return ret
        s.connected = True
        try:
            return self._ok(await s.poll(), jsonp_index=jsonp_index)
        except exceptions.QueueEmpty:
            return self._bad_request()

    async def _service_task(self) -> None:
        """Once a second: close sockets whose ping went unanswered, forget closed ones."""
        self.service_task_event = self.create_event()
        while not self.service_task_event.is_set():
            try:
                await asyncio.wait_for(self.service_task_event.wait(), timeout=1.0)
                break
            except TimeoutError:
                pass
            now = time.time()
            for s in list(self.sockets.values()):
                try:
                    if s.closed:
                        self.sockets.pop(s.sid, None)
                    elif not s.closing and s.last_ping and now - s.last_ping > self.ping_timeout:
                        await s.check_ping_timeout()
                except Exception:
                    log.exception("engine.io service task")
