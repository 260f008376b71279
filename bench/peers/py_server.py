"""Peer: plain python-socketio AsyncServer + AsyncRedisManager on aiohttp, with uvloop
as the gateway uses. No persistence, no checks: the ceiling of the framework.

usage: python py_server.py PORT REDIS_URL
events: "join" (room) joins a room; "send" ({room, ...}) emits "msg" to the room
through Redis (every node) and acks.
"""

from __future__ import annotations

import sys
from typing import Any

import socketio
from aiohttp import web


def build(redis_url: str) -> web.Application:
    mgr = socketio.AsyncRedisManager(redis_url, channel="bench-py-peer")
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=mgr, cors_allowed_origins="*")
    app = web.Application()
    sio.attach(app)

    @sio.on("join")
    async def join(sid: str, room: str) -> dict[str, Any]:
        await sio.enter_room(sid, room)
        return {"ok": True}

    @sio.on("send")
    async def send(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        await sio.emit("msg", data, room=data["room"])
        return {"ok": True}

    async def readyz(_req: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/readyz", readyz)
    return app


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build(redis_url), host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
