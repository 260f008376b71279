"""Load driver and loss checker (a Jepsen-style history check for chat).

Clients behave like a real client: they reorder by ``seq``, call ``sync`` when they
see a hole or receive ``sync:required``, and move to another node on ``reconnect`` or
disconnect. At the end the checker compares what was acknowledged with what every
member received (live or by ``sync``):

  acked       messages whose send was acknowledged ok
  delivered   (member, message) pairs received
  lost        acked messages some member never received
  unexpected  received messages nobody sent
  indeterminate  messages sent but never acknowledged (every retry failed) that were
              committed all the same: not a loss, reported apart
  duplicates  live deliveries of a message a member already had
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import socketio

log = logging.getLogger(__name__)


@dataclass
class Member:
    user_id: str
    token: str
    urls: list[str]
    channel_id: str
    sio: socketio.AsyncClient | None = None
    seen: dict[int, str] = field(default_factory=dict)  # seq -> message id (creates only)
    contents: dict[str, str] = field(default_factory=dict)  # message id -> content (= its nonce)
    max_seq: int = 0
    live: int = 0
    duplicates: int = 0
    sync_required: int = 0
    syncs: int = 0
    reconnects: int = 0
    _syncing: asyncio.Lock = field(default_factory=asyncio.Lock)
    _url_index: int = 0
    closed: bool = False

    async def connect(self) -> None:
        while not self.closed:
            url = self.urls[self._url_index % len(self.urls)]
            sio = socketio.AsyncClient(reconnection=False)
            sio.on("message:created", self._on_created)
            sio.on("sync:required", self._on_sync_required)
            sio.on("reconnect", self._on_reconnect)
            sio.on("disconnect", self._on_disconnect)
            ready = asyncio.Event()
            sio.on("ready", lambda _data, ready=ready: ready.set())
            try:
                await sio.connect(url, auth={"token": self.token}, transports=["websocket"], wait_timeout=5)
                await asyncio.wait_for(ready.wait(), 10)
                self.sio = sio
                await self.catch_up()
                return
            except Exception as exc:
                log.debug("member %s: connect to %s failed: %s", self.user_id, url, exc)
                self._url_index += 1
                try:
                    await sio.disconnect()
                except Exception:
                    pass
                await asyncio.sleep(0.5 + random.random())

    async def _on_created(self, data: dict[str, Any]) -> None:
        if data.get("channel_id") != self.channel_id:
            return
        self.live += 1
        self.contents[data["message"]["id"]] = data["message"].get("content", "")
        self._record(int(data["seq"]), data["message"]["id"], live=True)
        if int(data["seq"]) > len(self.seen) + 0 and self._has_hole():
            asyncio.ensure_future(self.catch_up())

    def _record(self, seq: int, message_id: str, live: bool) -> None:
        if seq in self.seen:
            if live:
                self.duplicates += 1
            return
        self.seen[seq] = message_id
        self.max_seq = max(self.max_seq, seq)

    def _has_hole(self) -> bool:
        return len(self.seen) < self.max_seq

    def contiguous(self) -> int:
        n = 0
        while (n + 1) in self.seen:
            n += 1
        return n

    async def _on_sync_required(self, data: dict[str, Any]) -> None:
        self.sync_required += 1
        asyncio.ensure_future(self.catch_up())

    async def _on_reconnect(self, data: dict[str, Any]) -> None:
        self.reconnects += 1
        self._url_index += 1
        await asyncio.sleep(min(5.0, data.get("after_ms", 0) / 1000))
        asyncio.ensure_future(self._reconnect())

    async def _on_disconnect(self, *args: Any) -> None:
        if not self.closed:
            self._url_index += 1
            asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        old, self.sio = self.sio, None
        if old is not None:
            try:
                await old.disconnect()
            except Exception:
                pass
        if not self.closed:
            await self.connect()

    async def catch_up(self) -> bool:
        """Sync from the first hole until complete. False when the server could not answer."""
        async with self._syncing:
            sio = self.sio
            if sio is None or not sio.connected:
                return False
            after = self.contiguous()
            for _ in range(1000):
                self.syncs += 1
                try:
                    ack = await sio.call("sync", {"channels": {self.channel_id: after}}, timeout=10)
                except Exception:
                    return False
                if not ack.get("ok"):
                    return False
                page = ack["channels"][self.channel_id]
                for ev in page["events"]:
                    if ev["event"] == "message:created":
                        self.contents[ev["message"]["id"]] = ev["message"].get("content", "")
                        self._record(int(ev["seq"]), ev["message"]["id"], live=False)
                    after = max(after, int(ev["seq"]))
                    self.max_seq = max(self.max_seq, int(ev["seq"]))
                    self.seen.setdefault(int(ev["seq"]), "")  # edits/deletes fill the log too
                if page["complete"]:
                    return True
            return False

    async def close(self) -> None:
        self.closed = True
        if self.sio is not None:
            try:
                await self.sio.disconnect()
            except Exception:
                pass


@dataclass
class Report:
    acked: int
    refused: int
    delivered: int
    lost: int
    unexpected: int
    indeterminate: int
    duplicates: int
    sync_required: int
    lost_live: int
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "details"}


class LoadRun:
    """Senders at a steady total rate into one channel; members on several nodes."""

    def __init__(self, members: list[Member], senders: list[Member], rate_per_s: float,
                 retry_for_s: float = 40.0) -> None:
        self.retry_for_s = retry_for_s
        self.members = members
        self.senders = senders
        self.rate = rate_per_s
        self.acked: dict[str, int] = {}  # message id -> seq
        self.sent_nonces: set[str] = set()
        self.refused = 0
        self.errors: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._nonce = itertools.count()

    async def start(self) -> None:
        await asyncio.gather(*(m.connect() for m in self.members))

    async def send_loop(self, duration_s: float) -> None:
        interval = 1.0 / self.rate
        deadline = time.monotonic() + duration_s
        tasks = []
        i = 0
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            sender = self.senders[i % len(self.senders)]
            i += 1
            tasks.append(asyncio.ensure_future(self._send_one(sender)))
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)

    async def _send_one(self, sender: Member) -> None:
        """Send once; retry with the same nonce after `unavailable` or a lost ack, as a
        client must, so that a committed message is always acknowledged in the end."""
        nonce = f"{sender.user_id}-{next(self._nonce)}"
        self.sent_nonces.add(nonce)
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.25
        code = "?"
        while True:
            sio = sender.sio
            if sio is None or not sio.connected:
                code = "not_connected"
            else:
                try:
                    ack = await sio.call("message:send", {"channel_id": sender.channel_id, "content": nonce,
                                                          "nonce": nonce}, timeout=10)
                    if ack.get("ok"):
                        self.acked[ack["message"]["id"]] = int(ack["message"]["seq"])
                        return
                    code = ack.get("error", {}).get("code", "?")
                    # A well-behaved client waits as long as the server asks (breaker open).
                    retry_after = ack.get("error", {}).get("retry_after_ms")
                    if isinstance(retry_after, int) and retry_after > 0:
                        delay = max(delay, min(10.0, retry_after / 1000))
                except Exception:
                    code = "no_ack"
            self.errors[code] = self.errors.get(code, 0) + 1
            if code not in ("unavailable", "no_ack", "not_connected") or time.monotonic() > deadline:
                self.refused += 1
                return
            await asyncio.sleep(delay)
            delay = min(4.0, delay * 2)

    async def settle(self, timeout_s: float = 30.0) -> None:
        """Let every member catch up (as a client does when it notices a hole)."""
        deadline = time.monotonic() + timeout_s
        top = max(self.acked.values(), default=0)
        while time.monotonic() < deadline:
            pending = [m for m in self.members if m.contiguous() < top]
            if not pending:
                return
            await asyncio.gather(*(m.catch_up() for m in pending))
            await asyncio.sleep(0.5)

    def report(self) -> Report:
        lost = 0
        lost_live = 0
        delivered = 0
        unexpected = 0
        indeterminate: set[str] = set()
        per_member = {}
        acked_ids = set(self.acked)
        for m in self.members:
            have = {mid for mid in m.seen.values() if mid}
            delivered += len(have & acked_ids)
            missing = acked_ids - have
            lost += len(missing)
            for mid in have - acked_ids:
                if m.contents.get(mid) in self.sent_nonces:
                    indeterminate.add(mid)
                else:
                    unexpected += 1
            lost_live += max(0, len(acked_ids) - m.live)
            per_member[m.user_id] = {"live": m.live, "missing": len(missing), "sync_required": m.sync_required,
                                     "syncs": m.syncs, "reconnects": m.reconnects}
        return Report(acked=len(self.acked), refused=self.refused, delivered=delivered, lost=lost,
                      unexpected=unexpected, indeterminate=len(indeterminate), duplicates=sum(m.duplicates for m in self.members),
                      sync_required=sum(m.sync_required for m in self.members), lost_live=lost_live,
                      details={"members": per_member, "errors": self.errors})

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self.members))


async def setup_members(http: aiohttp.ClientSession, urls: list[str], n: int, prefix: str) -> list[Member]:
    """``n`` users in one new guild, spread over ``urls``; returns unconnected members."""
    from libs.testing.client import ChatClient, guild_with_members

    clients = [await ChatClient(http, urls[i % len(urls)], f"{prefix}{i}").login() for i in range(n)]
    guild = await guild_with_members(clients[0], *clients[1:])
    return [Member(c.user_id, c.token, urls[i % len(urls):] + urls[:i % len(urls)], guild["text_channel"])
            for i, c in enumerate(clients)]
