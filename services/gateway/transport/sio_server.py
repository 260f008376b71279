"""python-socketio's AsyncServer with the gateway's protections below the event layer:

* Engine.IO sessions that never send a Socket.IO CONNECT are closed after a timeout;
* each socket's outbound backlog is bounded: past ``soft`` (bytes its WebSocket has not
  taken yet, or packets queued for a polling client), typing and presence events to it
  are dropped; past ``hard`` it gets ``sync:required`` for its channels and is
  disconnected. Other sockets are unaffected;
* Engine.IO is :mod:`libs.sio.fast_transport`: packets go straight to the WebSocket,
  and a broadcast is framed once for all its recipients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import socketio
from engineio import packet as eio_packet
from prometheus_client import Counter

from libs.sio.fast_transport import FastEngineServer, FastJson, FastPacket, spawn

log = logging.getLogger(__name__)

NO_CONNECT_CLOSED = Counter("chat_gateway_no_connect_closed_total",
                            "Engine.IO sessions closed for never sending CONNECT")
SLOW_DROPPED = Counter("chat_gateway_slow_client_dropped_total",
                       "Low-priority events not sent to slow clients", ["event"])
SLOW_EVICTED = Counter("chat_gateway_slow_client_evicted_total",
                       "Slow clients told to sync and disconnected")

PROTOCOL_ERRORS = Counter("chat_gateway_protocol_errors_total",
                          "Malformed Socket.IO traffic that closed the connection or was refused", ["kind"])

DROPPABLE_PREFIXES = ('2["typing"', '2["typing:stop"', '2["presence"')
# What stays of a socket's environ once it has connected.
KEPT_ENVIRON = ("REMOTE_ADDR", "aiohttp.request")
# Names python-socketio routes to its own handlers: never accepted from a client.
RESERVED_EVENTS = frozenset({"connect", "disconnect", "connect_error", "disconnecting",
                             "newListener", "removeListener", "*"})


class GatewayServer(socketio.AsyncServer):
    def __init__(self, *args: Any, connect_timeout_s: float = 10.0, queue_soft: int = 200,
                 queue_hard: int = 1000, buffer_soft: int = 256 * 1024, buffer_hard: int = 2 * 1024 * 1024,
                 channels_of: Callable[[str], list[str]] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("json", FastJson)
        kwargs.setdefault("serializer", FastPacket)
        super().__init__(*args, **kwargs)
        self.connect_timeout_s = connect_timeout_s
        self.queue_soft = queue_soft
        self.queue_hard = queue_hard
        self.buffer_soft = buffer_soft
        self.buffer_hard = buffer_hard
        self.channels_of = channels_of or (lambda sid: [])
        self._evicting: set[str] = set()

    def _engineio_server_class(self) -> type:
        return FastEngineServer

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        result = await super()._handle_eio_connect(eio_sid, environ)
        asyncio.get_running_loop().call_later(self.connect_timeout_s, self._check_connected, eio_sid)
        return result

    def _check_connected(self, eio_sid: str) -> None:
        # A CONNECT being handled is pre-connected (it has a sid), so it is left alone.
        if eio_sid in self.environ and self.manager.sid_from_eio_sid(eio_sid, "/") is None:
            spawn(self._close_unconnected(eio_sid))

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> Any:
        result = await super()._handle_connect(eio_sid, namespace, data)
        environ = self.environ.get(eio_sid)
        if environ is not None and len(environ) > len(KEPT_ENVIRON) and \
                self.manager.sid_from_eio_sid(eio_sid, namespace or "/") is not None:
            # Connected: nothing reads the WSGI-style environ (every header, copied) again.
            # Trimmed in place, as the connection's request frames hold the same dict.
            kept = {k: environ[k] for k in KEPT_ENVIRON if k in environ}
            environ.clear()
            environ.update(kept)
        return result

    async def _close_unconnected(self, eio_sid: str) -> None:
        """Close without waiting for the socket's queue to drain (``eio.disconnect`` waits): a
        session whose WebSocket upgrade never completed, or whose client stopped polling, has
        nobody taking from its queue, and the close would wait for ever."""
        try:
            NO_CONNECT_CLOSED.inc()
            log.info("closing an Engine.IO session that never connected", extra={"eio_sid": eio_sid})
            sock = self.eio.sockets.get(eio_sid)
            if sock is not None:
                await sock.close(wait=False, reason=self.eio.reason.SERVER_DISCONNECT)
                self.eio.sockets.pop(eio_sid, None)
        except Exception:
            log.exception("no-CONNECT close failed")

    # -- bounded per-socket backlog ------------------------------------------------------
    def _admit(self, eio_sid: str, data: Any) -> bool:
        sock = self.eio.sockets.get(eio_sid)
        if sock is None:
            return True
        if sock.direct:
            depth, soft, hard = sock.buffered(), self.buffer_soft, self.buffer_hard
        else:
            depth, soft, hard = sock.queue.qsize(), self.queue_soft, self.queue_hard
        if depth < soft:
            return True
        if eio_sid in self._evicting:
            return False
        if depth >= hard:
            self._evicting.add(eio_sid)
            spawn(self._evict(eio_sid, sock))
            return False
        if isinstance(data, str) and data.startswith(DROPPABLE_PREFIXES):
            SLOW_DROPPED.labels(data[3:data.find('"', 3)]).inc()
            return False
        return True

    async def _evict(self, eio_sid: str, sock: Any) -> None:
        try:
            SLOW_EVICTED.inc()
            sid = self.manager.sid_from_eio_sid(eio_sid, "/")
            log.warning("slow client: %d bytes / %d packets not taken; asking it to sync and disconnecting",
                        sock.buffered(), sock.queue.qsize(), extra={"sid": sid})
            if sid is not None:
                pkt = self.packet_class(socketio.packet.EVENT, namespace="/",
                                        data=["sync:required", {"channel_ids": sorted(self.channels_of(sid))}])
                sock.send_nowait(eio_packet.Packet(eio_packet.MESSAGE, pkt.encode()))
                await asyncio.sleep(0)
                await self.disconnect(sid)
            else:
                await self.eio.disconnect(eio_sid)
        except Exception:
            log.exception("evicting a slow client failed")
        finally:
            self._evicting.discard(eio_sid)

    # -- malformed traffic ----------------------------------------------------------------
    async def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> Any:
        name = data[0] if isinstance(data, list) and data else None
        if not isinstance(name, str) or name in RESERVED_EVENTS:
            PROTOCOL_ERRORS.labels("bad_event_name").inc()
            if id is not None:
                await self._send_packet(eio_sid, self.packet_class(
                    socketio.packet.ACK, namespace=namespace, id=id,
                    data=[{"ok": False, "error": {"code": "invalid", "message": "event name not accepted"}}]))
            return None
        return await super()._handle_event(eio_sid, namespace, id, data)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> Any:
        """A packet python-socketio cannot parse (e.g. a broken binary event) closes the
        connection instead of wedging the session."""
        if eio_sid in self._binary_packet and not isinstance(data, bytes):
            # A text packet where a binary attachment was due: the client broke the protocol.
            data = None
        try:
            if data is None:
                raise ValueError("binary attachment expected")
            return await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:
            self._binary_packet.pop(eio_sid, None)
            PROTOCOL_ERRORS.labels(type(exc).__name__).inc()
            log.info("malformed packet (%s); closing the connection", type(exc).__name__)
            try:
                await self.eio.disconnect(eio_sid)
            except Exception:
                log.debug("close after a malformed packet failed", exc_info=True)
            return None

    # -- fan-out fast path -------------------------------------------------------------------
    def deliver(self, eio_sid: str, eio_pkt: Any, frame: bytes) -> None:
        """Send one pre-encoded packet to a local socket, synchronously: its WebSocket frame
        (or the packet, queued for a polling client); no task and no encoding per
        recipient (the adapter's fan-out path)."""
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.closed:
            return
        ws = sock.ws
        if ws is not None and ws.buffered() < self.buffer_soft:
            ws.write(frame)
        elif self._admit(eio_sid, eio_pkt.data):
            sock.send_frame(frame, eio_pkt)

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        if pkt.packet_type == socketio.packet.EVENT and not self._admit(eio_sid, None):
            return
        await super()._send_packet(eio_sid, pkt)

    async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        if not self._admit(eio_sid, eio_pkt.data):
            return
        await super()._send_eio_packet(eio_sid, eio_pkt)
