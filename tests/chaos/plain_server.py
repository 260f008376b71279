"""The baseline the checker must be able to fail: plain python-socketio with the stock
AsyncRedisManager, no persistence, no `sync`. Same events and payload shapes as the
project for `message:send`, so the same load driver and checker run against it.

usage: python plain_server.py PORT REDIS_URL
"""

from __future__ import annotations

import itertools
import sys
import time

import socketio
from aiohttp import web

port, redis_url = int(sys.argv[1]), sys.argv[2]
mgr = socketio.AsyncRedisManager(redis_url, channel="plain-baseline")
sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=mgr, cors_allowed_origins="*")
app = web.Application()
sio.attach(app)
ids = itertools.count(1)


@sio.on("connect")
async def connect(sid, environ, auth):  # type: ignore[no-untyped-def]
    channel = "1"
    await sio.enter_room(sid, "ch:" + channel)
    await sio.emit("ready", {"channels": [{"id": channel, "last_seq": 0}], "presences": []}, to=sid)


@sio.on("message:send")
async def send(sid, data):  # type: ignore[no-untyped-def]
    # No shared sequence without a database: a node-local counter stands in for seq.
    mid = f"{port}-{next(ids)}"
    message = {"id": mid, "channel_id": data["channel_id"], "seq": int(time.time() * 1e6),
               "content": data["content"], "nonce": data["nonce"]}
    await sio.emit("message:created", {"channel_id": data["channel_id"], "seq": message["seq"], "message": message},
                   room="ch:" + data["channel_id"])
    return {"ok": True, "message": message}


@sio.on("sync")
async def sync(sid, data):  # type: ignore[no-untyped-def]
    return {"ok": False, "error": {"code": "invalid", "message": "no history"}}


if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=port, print=None)
