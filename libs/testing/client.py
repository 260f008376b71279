"""A test client of the public contract: dev tokens, HTTP API calls, Socket.IO sessions
that record every event they receive."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

import aiohttp
import socketio


class Recorder:
    """A python-socketio AsyncClient that keeps every server event, by name."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self._cond = asyncio.Condition()
        self.sio.on("*", self._on_any)

    async def _on_any(self, event: str, *args: Any) -> None:
        async with self._cond:
            self.events[event].append(args[0] if len(args) == 1 else list(args))
            self._cond.notify_all()

    async def wait_for(self, event: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        async def enough() -> None:
            async with self._cond:
                await self._cond.wait_for(lambda: len(self.events[event]) >= count)

        await asyncio.wait_for(enough(), timeout)
        return self.events[event]

    async def call(self, event: str, data: Any, timeout: float = 10.0) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def disconnect(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


class ChatClient:
    """One user against one gateway URL."""

    def __init__(self, http: aiohttp.ClientSession, base: str, user_id: str, name: str | None = None) -> None:
        self.http = http
        self.base = base
        self.user_id = user_id
        self.name = name or user_id.title()
        self.token = ""
        self.sockets: list[Recorder] = []

    async def login(self) -> ChatClient:
        async with self.http.post(f"{self.base}/api/v1/dev/token", json={"sub": self.user_id, "name": self.name}) as r:
            assert r.status == 200, await r.text()
            self.token = (await r.json())["token"]
        return self

    async def api(self, method: str, path: str, json: Any = None, expect: int | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.request(method, f"{self.base}/api/v1{path}", json=json, headers=headers) as r:
            body = await r.json(content_type=None)
            if expect is not None:
                assert r.status == expect, (r.status, body)
            return body

    async def connect(self, base: str | None = None, transports: list[str] | None = None,
                      auth: Any = "default") -> Recorder:
        rec = Recorder()
        await rec.sio.connect(base or self.base, auth={"token": self.token} if auth == "default" else auth,
                              transports=transports or ["websocket"], wait_timeout=10)
        await rec.wait_for("ready")
        self.sockets.append(rec)
        return rec

    async def close(self) -> None:
        for rec in self.sockets:
            await rec.disconnect()


async def guild_with_members(owner: ChatClient, *members: ChatClient, name: str = "g") -> dict[str, Any]:
    """Create a guild owned by ``owner`` and join ``members`` through an invite."""
    guild = await owner.api("POST", "/guilds", {"name": name}, expect=201)
    invite = await owner.api("POST", f"/guilds/{guild['id']}/invites", expect=201)
    for m in members:
        await m.api("POST", f"/invites/{invite['code']}", expect=200)
    guild["text_channel"] = next(c["id"] for c in guild["channels"] if c["kind"] == "text")
    return guild


def uid(prefix: str) -> str:
    """A user id no other test uses (tests share one cluster and its database)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"
