"""A Socket.IO Redis adapter that survives Redis outages without silent loss.

Subclass of python-socketio's ``AsyncRedisManager`` through its documented extension
points (``_publish`` / ``_listen``), shared by the gateway and every service that emits:

* publishing never blocks the caller: emits go into a bounded per-room
  :class:`OutboundQueue` drained by one task in pipelined batches, behind a breaker,
  with jittered backoff (1 s -> 30 s) while Redis is away;
* the listener keeps an idle subscription alive (TCP keepalive, health checks, no read
  timeout), closes the old connection on every reconnect, retries with the same
  backoff and never gives up;
* a watchdog makes a pub/sub round trip through Redis every few seconds; a listener
  that stops hearing itself is declared dead and reconnected;
* after any gap in this node's listener, and after any cross-node emit was dropped,
  every local socket in an affected channel room gets ``sync:required`` so that
  ``sync`` brings back from Postgres what pub/sub lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet

from libs.observability import metrics
from libs.resilience.backoff import Backoff
from libs.resilience.breaker import CircuitBreaker
from libs.sio.fast_transport import FastPacket, packet_frame
from libs.sio.outbound_queue import OutboundQueue

log = logging.getLogger(__name__)

CHANNEL_ROOM_PREFIX = "ch:"
USER_ROOM_PREFIX = "u:"


def channel_room(channel_id: str) -> str:
    return CHANNEL_ROOM_PREFIX + str(channel_id)


def user_room(user_id: str) -> str:
    return USER_ROOM_PREFIX + user_id


GUILD_ROOM_PREFIX = "g:"


def guild_room(guild_id: str) -> str:
    """Every member socket of a guild: presence and member events go here."""
    return GUILD_ROOM_PREFIX + str(guild_id)


class _OrjsonCodec:
    """JSON for adapter messages (faster than the stdlib)."""

    @staticmethod
    def dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(data: str | bytes) -> Any:
        return orjson.loads(data)


class _SidList(dict[str, None]):
    """The list python-socketio keeps of sids connecting or disconnecting in a namespace,
    as an insertion-ordered dict: ``in`` and ``remove`` are O(1), not a scan of every sid
    in a connect or disconnect storm."""

    def __init__(self, sids: Any = ()) -> None:
        super().__init__(dict.fromkeys(sids))

    def append(self, sid: str) -> None:
        self[sid] = None

    def remove(self, sid: str) -> None:
        try:
            del self[sid]
        except KeyError:
            raise ValueError(sid) from None


class _PendingSids(dict[str, _SidList]):
    """``pending_connect`` / ``pending_disconnect``: namespace -> _SidList (the base class
    stores a new ``[]`` per namespace; it becomes a _SidList)."""

    def __setitem__(self, namespace: str, sids: Any) -> None:
        super().__setitem__(namespace, sids if isinstance(sids, _SidList) else _SidList(sids))


class ResilientRedisManager(socketio.AsyncRedisManager):
    name = "resilient-redis"

    def __init__(self, url: str, channel: str = "chat-socketio", *, write_only: bool = False,
                 backoff: Backoff | None = None, breaker: CircuitBreaker | None = None,
                 queue_per_room: int = 1000, queue_ttl_s: float = 300.0,
                 batch_size: int = 256, watchdog_interval_s: float = 5.0) -> None:
        super().__init__(
            url=url, channel=channel, write_only=write_only, json=_OrjsonCodec,
            redis_options={
                "socket_keepalive": True,
                "socket_connect_timeout": 3,
                "health_check_interval": 10,
                "retry_on_timeout": False,
            },
        )
        self.backoff = backoff or Backoff()
        self.listen_backoff = Backoff(initial=self.backoff.initial, maximum=self.backoff.maximum,
                                      factor=self.backoff.factor, down_after=self.backoff.down_after)
        self.breaker = breaker or CircuitBreaker("redis")
        self.queue = OutboundQueue(queue_per_room, queue_ttl_s)
        self.batch_size = batch_size
        self.watchdog_interval_s = watchdog_interval_s
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._pub_redis: Any = None
        self.pubsub: Any = None
        self.redis: Any = None
        self.listener_up = False
        self.listener_gaps = 0
        self.reconnects = 0
        self._last_watchdog_rx = time.monotonic()
        self._watchdog_channel = f"{channel}:wd:{self.host_id}"
        self.on_connect: Callable[[str], Awaitable[None]] | None = None
        self.publish_state = "up"
        # The rooms of each sid, so a disconnect leaves its own rooms instead of python-socketio's
        # scan of every room of the namespace (quadratic in a reconnect storm).
        self._sid_rooms: dict[tuple[str, str], set[Any]] = {}
        self.pending_connect = _PendingSids()
        self.pending_disconnect = _PendingSids()
        metrics.ADAPTER_LISTENER_UP.set(0)

    # -- startup -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the drain task and (unless write-only) the listener, at process start."""
        if self.server is not None and not getattr(self.server, "manager_initialized", True):
            self.server.manager_initialized = True
        if not self.write_only and self.server is not None:
            self.initialize()  # starts python-socketio's listener thread (our _listen)
            self._tasks.append(asyncio.create_task(self._watchdog(), name="adapter-watchdog"))
        self._tasks.append(asyncio.create_task(self._drain_forever(), name="adapter-drain"))
        self._tasks.append(self.breaker.start_prober(self._ping, Backoff(
            initial=self.backoff.initial, maximum=self.backoff.maximum, factor=self.backoff.factor)))

    def initialize(self) -> None:
        if getattr(self, "_initialized", False):
            return
        self._initialized = True
        super().initialize()

    async def stop(self, flush_timeout: float = 5.0) -> None:
        deadline = time.monotonic() + flush_timeout
        while len(self.queue) and time.monotonic() < deadline and self.breaker.state == "closed":
            self._wakeup.set()
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in (self._pub_redis, self.redis):
            if conn is not None:
                try:
                    await conn.aclose()
                except Exception:
                    pass

    # -- rooms: indexed by sid ----------------------------------------------------------------
    # A socket's own room (named by its sid) has no bidict of its own: python-socketio made
    # one per socket (about 0.6 KB each) to hold that one member. It is kept in the sid's
    # room set only; get_participants answers it from the namespace's sid -> eio_sid map.
    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        if room is not None and room == sid:
            if eio_sid is None and namespace not in self.rooms:
                raise ValueError("sid is not connected to requested namespace")
        else:
            super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._sid_rooms.setdefault((namespace, sid), set()).add(room)

    def get_participants(self, namespace: str, room: Any) -> Any:
        ns = self.rooms.get(namespace, {})
        names = (room,) if isinstance(room, str) or not hasattr(room, "__len__") else room
        participants: dict[str, str] = {}
        for name in names:
            members = ns.get(name)
            if members is not None:
                participants.update(members._fwdm)
            elif name is not None and name in self._sid_rooms.get((namespace, name), ()):
                eio_sid = ns[None]._fwdm.get(name) if None in ns else None
                if eio_sid is not None:
                    participants[name] = eio_sid
        yield from participants.items()

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._sid_rooms.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)

    def basic_close_room(self, room: Any, namespace: str) -> None:
        if room is not None and room in self._sid_rooms.get((namespace, room), ()):
            raise ValueError("cannot close a sid room")
        members = list(self.rooms.get(namespace, {}).get(room, {}))
        super().basic_close_room(room, namespace)
        for sid in members:
            rooms = self._sid_rooms.get((namespace, sid))
            if rooms is not None:
                rooms.discard(room)

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """python-socketio's, leaving only the rooms this sid is in."""
        rooms = self._sid_rooms.pop((namespace, sid), set())
        if namespace not in self.rooms:
            return
        for room in rooms:
            super().basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        return [r for r in self._sid_rooms.get((namespace, sid), ()) if r is not None]

    # -- connect hook: emit `ready` after the CONNECT packet ---------------------------
    async def connect(self, sid: str, namespace: str) -> Any:
        result = await super().connect(sid, namespace)
        if self.on_connect is not None:
            try:
                await self.on_connect(sid)
            except Exception:
                log.exception("on_connect hook failed")
        return result

    # -- emitting ---------------------------------------------------------------------------
    async def emit(self, event: str, data: Any, namespace: str | None = None, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None, **kwargs: Any) -> Any:
        """python-socketio's emit, with two changes: the "does it hold bytes?" check is
        FastPacket's, and an emit to one socket of this node (``ready``, an ack-less reply)
        is delivered here only, not published for every other node to decode and drop."""
        room = to or room
        if kwargs.get("ignore_queue") or callback is not None:
            return await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                                      callback=callback, **kwargs)
        namespace = namespace or "/"
        data = list(data) if isinstance(data, tuple) else [data]
        if FastPacket.data_is_binary(data):
            return await super().emit(event, data[0] if len(data) == 1 else tuple(data), namespace=namespace,
                                      room=room, skip_sid=skip_sid)
        message = {"method": "emit", "event": event, "data": data, "binary": False, "namespace": namespace,
                   "room": room, "skip_sid": skip_sid, "callback": None, "host_id": self.host_id}
        await self._handle_emit(message)  # this node's sockets
        if not (isinstance(room, str) and self.server is not None and self.is_connected(room, namespace)):
            await self._publish(message)  # the other nodes'
        return None

    # -- local delivery: one encoding, no task per recipient -------------------------------
    async def _handle_emit(self, message: dict[str, Any]) -> None:
        deliver = getattr(self.server, "deliver", None)
        if deliver is None or message.get("callback") is not None or message.get("binary"):
            return await super()._handle_emit(message)
        namespace = message.get("namespace") or "/"
        if namespace not in self.rooms:
            return None
        data = message["data"]
        if not isinstance(data, list):
            data = [data]
        if data == [None]:
            data = []
        pkt = self.server.packet_class(socketio.packet.EVENT, namespace=namespace, data=[message["event"], *data])
        encoded = pkt.encode()
        eio_pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        frame = packet_frame(eio_pkt)
        skip = message.get("skip_sid")
        skip_set = set(skip) if isinstance(skip, list) else {skip}
        for sid, eio_sid in self.get_participants(namespace, message.get("room")):
            if sid not in skip_set:
                deliver(eio_sid, eio_pkt, frame)
        return None

    # -- publishing --------------------------------------------------------------------
    async def _publish(self, data: Any) -> None:
        room = data.get("room") if isinstance(data, dict) else None
        self.queue.put(str(room) if room is not None else "*", data)
        self._wakeup.set()

    def _publisher(self) -> Any:
        if self._pub_redis is None:
            module = self._get_redis_module()
            self._pub_redis = module.Redis.from_url(self.redis_url, **self.redis_options)
        return self._pub_redis

    async def _drain_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while len(self.queue):
                if not self.breaker.allow():
                    await asyncio.sleep(0.25)  # the prober half-opens it when Redis answers
                    continue
                batch = self.queue.take(self.batch_size)
                if not batch:
                    self.breaker.record_success()  # nothing to send: give the probe slot back
                    break
                try:
                    pipe = self._publisher().pipeline(transaction=False)
                    for _room, msg in batch:
                        pipe.publish(self.channel, self.json.dumps(msg))
                    await asyncio.wait_for(pipe.execute(), 5)
                except asyncio.CancelledError:
                    self.queue.put_back(batch)
                    raise
                except Exception as exc:
                    self.breaker.record_failure()
                    self.queue.put_back(batch)
                    metrics.DEPENDENCY_ERRORS.labels("redis").inc()
                    delay = self.backoff.next_delay()
                    self.publish_state = "down" if self.backoff.down else "reconnecting"
                    log.warning("redis publish failed (%s); %d queued; retry in %.1fs",
                                type(exc).__name__, len(self.queue), delay)
                    await self._reset_publisher()
                    await asyncio.sleep(delay)
                    continue
                self.breaker.record_success()
                metrics.ADAPTER_PUBLISHED.inc(len(batch))
                if self.backoff.attempts:
                    log.info("redis publish recovered; %d still queued", len(self.queue))
                    self.backoff.reset()
                    self.reconnects += 1
                    metrics.DEPENDENCY_RECONNECTS.labels("redis").inc()
                self.publish_state = "up"
                lossy = self.queue.take_lossy_rooms()
                if lossy:
                    await self._announce_loss(lossy)

    async def _ping(self) -> bool:
        try:
            return bool(await self._publisher().ping())
        except Exception:
            await self._reset_publisher()
            return False

    async def force_reconnect(self) -> None:
        """Drop both Redis connections now (an operator's recovery): the listener and the
        publisher reconnect at once, and queued emits are sent as soon as they do."""
        await self._close_listener_connection()
        await self._reset_publisher()
        self._wakeup.set()

    async def _reset_publisher(self) -> None:
        conn, self._pub_redis = self._pub_redis, None
        if conn is not None:
            try:
                await conn.aclose()
            except Exception:
                pass

    async def _announce_loss(self, rooms: set[str]) -> None:
        """Emits to these rooms were dropped: every node tells its sockets there to sync."""
        channel_rooms = sorted(r for r in rooms if r.startswith(CHANNEL_ROOM_PREFIX))
        if not channel_rooms:
            return
        log.warning("cross-node emits dropped for %d rooms; asking their clients to sync", len(channel_rooms))
        msg = {"method": "sync_required", "rooms": channel_rooms, "host_id": self.host_id}
        if not self.write_only:
            await self._notify_sync_required(set(channel_rooms))
        self.queue.put("*sync", msg)
        self._wakeup.set()

    # -- listening ---------------------------------------------------------------------
    def _set_listener(self, up: bool) -> None:
        self.listener_up = up
        metrics.ADAPTER_LISTENER_UP.set(1 if up else 0)

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:  # type: ignore[override]
        first = True
        while True:
            try:
                await self._close_listener_connection()
                self._redis_connect()
                assert self.pubsub is not None
                await self.pubsub.subscribe(self.channel, self._watchdog_channel)
                self._set_listener(True)
                self._last_watchdog_rx = time.monotonic()
                if self.listen_backoff.attempts:
                    self.reconnects += 1
                    metrics.DEPENDENCY_RECONNECTS.labels("redis").inc()
                self.listen_backoff.reset()
                self.breaker.half_open()  # Redis answers again: stop failing fast
                log.info("redis listener subscribed")
                if not first:
                    await self._after_gap()
                first = False
                async for message in self.pubsub.listen():
                    yield message
                raise ConnectionError("pub/sub stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.listener_up:
                    self.listener_gaps += 1
                    metrics.ADAPTER_LISTENER_GAPS.inc()
                self._set_listener(False)
                first = False
                delay = self.listen_backoff.next_delay()
                log.warning("redis listener lost (%s: %s); resubscribing in %.1fs",
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)

    async def _close_listener_connection(self) -> None:
        pubsub, redis = self.pubsub, self.redis
        self.pubsub = self.redis = None
        self.connected = False
        for conn in (pubsub, redis):
            if conn is not None:
                try:
                    await conn.aclose()
                except Exception:
                    pass

    async def _listen(self) -> AsyncIterator[Any]:  # type: ignore[override]
        channel = self.channel.encode()
        wd = self._watchdog_channel.encode()
        async for message in self._redis_listen_with_retries():
            if message.get("type") != "message":
                continue
            ch = message.get("channel")
            if ch == wd:
                self._last_watchdog_rx = time.monotonic()
                continue
            if ch == channel and "data" in message:
                metrics.ADAPTER_RECEIVED.inc()
                data = message["data"]
                if data[:30].find(b'"sync_required"') != -1:
                    await self._handle_sync_required_msg(data)
                    continue
                yield data

    async def _handle_sync_required_msg(self, data: bytes) -> None:
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if msg.get("method") == "sync_required" and msg.get("host_id") != self.host_id:
            await self._notify_sync_required(set(msg.get("rooms") or []))

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.watchdog_interval_s)
            try:
                if self.listener_up:
                    silent = time.monotonic() - self._last_watchdog_rx
                    if silent > 3 * self.watchdog_interval_s:
                        log.error("redis listener silent for %.0fs; reconnecting it", silent)
                        await self._close_listener_connection()
                        continue
                    await asyncio.wait_for(self._publisher().publish(self._watchdog_channel, b"1"), 3)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("watchdog publish failed: %s", exc)

    async def _after_gap(self) -> None:
        metrics.ADAPTER_SYNC_REQUIRED.inc()
        await self._notify_sync_required(None)

    async def _notify_sync_required(self, rooms: set[str] | None) -> None:
        """Tell each local socket in the given channel rooms (all when None) to sync."""
        per_sid: dict[str, list[str]] = {}
        ns_rooms = self.rooms.get("/", {})
        for room, members in list(ns_rooms.items()):
            if not isinstance(room, str) or not room.startswith(CHANNEL_ROOM_PREFIX):
                continue
            if rooms is not None and room not in rooms:
                continue
            cid = room[len(CHANNEL_ROOM_PREFIX):]
            for sid in list(members):
                per_sid.setdefault(sid, []).append(cid)
        for sid, cids in per_sid.items():
            try:
                await socketio.AsyncManager.emit(self, "sync:required", {"channel_ids": sorted(cids)},
                                                 namespace="/", room=sid)
            except Exception:
                log.exception("could not send sync:required")
        if per_sid:
            log.info("sync:required sent to %d local sockets", len(per_sid))

    def health(self) -> dict[str, Any]:
        listening = self.listener_up or self.write_only
        # A publish failure matters while emits wait for Redis; an empty queue has nothing pending.
        publishing = self.publish_state == "up" or len(self.queue) == 0
        if listening and publishing:
            state = "up"
        elif self.listen_backoff.down or self.backoff.down:
            state = "down"
        else:
            state = "reconnecting"
        return {
            "state": state,
            "listener": "up" if self.listener_up else ("n/a" if self.write_only else "down"),
            "publisher": self.publish_state if len(self.queue) else "idle",
            "breaker": self.breaker.state,
            "queue_depth": len(self.queue),
            "listener_gaps": self.listener_gaps,
            "reconnects": self.reconnects,
        }
