"""Bounded per-room queue of cross-node emits waiting to be published to Redis.

At most ``per_room`` entries per room (oldest dropped first), each expiring after
``ttl_s``. Everything dropped or expired is counted and remembered by room so that
the affected clients can be told to ``sync``.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from libs.observability import metrics

Entry = tuple[float, Any]


class OutboundQueue:
    def __init__(self, per_room: int = 1000, ttl_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_room = per_room
        self.ttl_s = ttl_s
        self._clock = clock
        self._rooms: OrderedDict[str, deque[Entry]] = OrderedDict()
        self._size = 0
        self.lossy_rooms: set[str] = set()

    def __len__(self) -> int:
        return self._size

    def _drop(self, room: str, n: int, reason: str) -> None:
        self._size -= n
        metrics.ADAPTER_DROPPED.labels(reason).inc(n)
        self.lossy_rooms.add(room)

    def put(self, room: str, item: Any) -> None:
        q = self._rooms.get(room)
        if q is None:
            q = self._rooms[room] = deque()
        q.append((self._clock(), item))
        self._size += 1
        if len(q) > self.per_room:
            q.popleft()
            self._drop(room, 1, "overflow")
        metrics.ADAPTER_QUEUE_DEPTH.set(self._size)

    def take(self, limit: int) -> list[tuple[str, Any]]:
        """Remove up to ``limit`` entries, round-robin over rooms, oldest first per room;
        expired entries are discarded (and counted) on the way."""
        out: list[tuple[str, Any]] = []
        now = self._clock()
        while self._rooms and len(out) < limit:
            progressed = False
            for room in list(self._rooms):
                q = self._rooms[room]
                while q and now - q[0][0] > self.ttl_s:
                    q.popleft()
                    self._drop(room, 1, "expired")
                if q:
                    out.append((room, q.popleft()[1]))
                    self._size -= 1
                    progressed = True
                if not q:
                    del self._rooms[room]
                if len(out) >= limit:
                    break
            if not progressed:
                break
        metrics.ADAPTER_QUEUE_DEPTH.set(self._size)
        return out

    def put_back(self, entries: list[tuple[str, Any]]) -> None:
        """Return entries that could not be published, at the front, keeping order."""
        now = self._clock()
        for room, item in reversed(entries):
            q = self._rooms.get(room)
            if q is None:
                q = self._rooms[room] = deque()
                self._rooms.move_to_end(room, last=False)
            q.appendleft((now, item))
            self._size += 1
            if len(q) > self.per_room:
                q.popleft()
                self._drop(room, 1, "overflow")
        metrics.ADAPTER_QUEUE_DEPTH.set(self._size)

    def take_lossy_rooms(self) -> set[str]:
        rooms, self.lossy_rooms = self.lossy_rooms, set()
        return rooms
