"""The first real path: a message from a client on one gateway node, through NATS and
Postgres, to a client on the other node (python-socketio and the official JS client)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import aiohttp
import asyncpg
import jwt
import pytest
import socketio

from libs.testing.client import ChatClient, guild_with_members, uid
from libs.testing.fixtures import JWT_SECRET, Stack

NODE_DIR = Path(__file__).parent / "node"


async def two_users(http: aiohttp.ClientSession, stack: Stack) -> tuple[ChatClient, ChatClient, dict]:
    g1, g2 = stack.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    guild = await guild_with_members(alice, bob)
    return alice, bob, guild


async def test_message_crosses_nodes_and_is_stored(http, cluster: Stack):
    alice, bob, guild = await two_users(http, cluster)
    a = await alice.connect()
    b = await bob.connect()
    ready = b.events["ready"][0]
    assert ready["user"]["id"] == bob.user_id
    assert guild["text_channel"] in {c["id"] for c in ready["channels"]}
    ch = guild["text_channel"]

    ack = await a.call("message:send", {"channel_id": ch, "content": "hello bob", "nonce": "n-1"})
    assert ack["ok"] is True, ack
    assert ack["message"]["seq"] == 1
    got = (await b.wait_for("message:created"))[0]
    assert got["channel_id"] == ch and got["seq"] == 1
    assert got["message"]["content"] == "hello bob"
    assert got["message"]["author"] == {"id": alice.user_id, "name": alice.name}

    conn = await asyncpg.connect(cluster.cluster.database_url)
    try:
        row = await conn.fetchrow("SELECT seq, content, author_id FROM messages WHERE id = $1",
                                  int(ack["message"]["id"]))
    finally:
        await conn.close()
    assert dict(row) == {"seq": 1, "content": "hello bob", "author_id": alice.user_id}
    await alice.close()
    await bob.close()


async def test_same_nonce_gives_one_message(http, cluster: Stack):
    alice, bob, guild = await two_users(http, cluster)
    a = await alice.connect()
    payload = {"channel_id": guild["text_channel"], "content": "once", "nonce": "same-nonce"}
    first = await a.call("message:send", payload)
    second = await a.call("message:send", payload)
    assert first["ok"] and second["ok"]
    assert first["message"] == second["message"]
    history = await alice.api("GET", f"/channels/{guild['text_channel']}/messages", expect=200)
    assert [m["content"] for m in history["messages"]] == ["once"]
    await alice.close()


async def test_concurrent_senders_get_gap_free_seqs(http, cluster: Stack):
    g1, g2 = cluster.gateways
    owner = await ChatClient(http, g1, uid("owner")).login()
    senders = [await ChatClient(http, (g1, g2)[i % 2], uid(f"s{i}-")).login() for i in range(20)]
    guild = await guild_with_members(owner, *senders)
    sockets = [await s.connect() for s in senders]
    acks = await asyncio.gather(*(
        sock.call("message:send", {"channel_id": guild["text_channel"], "content": f"m{i}", "nonce": f"n{i}"})
        for i, sock in enumerate(sockets)))
    assert all(a["ok"] for a in acks), acks
    assert sorted(a["message"]["seq"] for a in acks) == list(range(1, 21))
    for s in senders:
        await s.close()


def _token(**overrides) -> str:
    now = int(time.time())
    claims = {"sub": "mallory", "name": "M", "aud": "chat", "iss": "chat-dev", "iat": now, "exp": now + 600}
    claims.update(overrides.pop("claims", {}))
    key = overrides.pop("key", JWT_SECRET)
    alg = overrides.pop("alg", "HS256")
    return jwt.encode(claims, key, algorithm=alg)


def _alg_none_token() -> str:
    import base64

    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return b64({"alg": "none", "typ": "JWT"}) + "." + b64(
        {"sub": "mallory", "aud": "chat", "iss": "chat-dev", "iat": now, "exp": now + 600}) + "."


@pytest.mark.parametrize("auth", [
    None,
    {},
    {"token": 42},
    {"token": _token(key="wrong-secret-0123456789abcdef0123456789")},
    {"token": _token(claims={"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200})},
    {"token": _token(claims={"aud": "someone-else"})},
    {"token": _token(claims={"iss": "someone-else"})},
    {"token": _alg_none_token()},
], ids=["no-auth", "no-token", "not-a-string", "bad-signature", "expired", "wrong-audience",
        "wrong-issuer", "alg-none"])
async def test_bad_tokens_are_refused_unauthorized(cluster: Stack, auth):
    client = socketio.AsyncClient(reconnection=False)
    errors: list = []
    client.on("connect_error", lambda data: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(cluster.gateways[0], auth=auth, transports=["websocket"], wait_timeout=5)
    assert errors, "no connect_error received"
    data = errors[0]
    assert data["message"] == "unauthorized"
    assert data["data"]["code"] == "unauthorized"
    await client.disconnect()


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is required for the official JS client")
@pytest.mark.parametrize("mode", ["websocket", "polling"])
async def test_official_js_client(http, cluster: Stack, mode: str):
    assert (NODE_DIR / "node_modules" / "socket.io-client").exists(), "run `make test` (installs the JS client)"
    alice, bob, guild = await two_users(http, cluster)
    g1, g2 = cluster.gateways
    ch = guild["text_channel"]
    # Bob (JS, node 2) waits for one message; Alice (JS, node 1) sends it with an ack.
    receiver = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "client.mjs"), g2, bob.token, mode, "--expect", "1", "--timeout", "15000",
        stdout=asyncio.subprocess.PIPE)
    line = await asyncio.wait_for(receiver.stdout.readline(), 15)
    assert json.loads(line)["event"] == "ready"
    line = await asyncio.wait_for(receiver.stdout.readline(), 15)
    assert json.loads(line) == {"event": "transport", "name": "websocket"}
    sender = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "client.mjs"), g1, alice.token, mode, "--send", ch, f"from js {mode}", "n-js",
        "--timeout", "15000", stdout=asyncio.subprocess.PIPE)
    s_out, _ = await asyncio.wait_for(sender.communicate(), 20)
    r_out, _ = await asyncio.wait_for(receiver.communicate(), 20)
    s_events = [json.loads(x) for x in s_out.decode().splitlines()]
    r_events = [json.loads(x) for x in r_out.decode().splitlines()]
    ack = next(e for e in s_events if e["event"] == "ack")["data"]
    assert ack["ok"] is True and ack["message"]["content"] == f"from js {mode}"
    created = next(e for e in r_events if e["event"] == "message:created")["data"]
    assert created["message"]["id"] == ack["message"]["id"] and created["seq"] == ack["message"]["seq"]
    assert sender.returncode == 0 and receiver.returncode == 0


async def test_js_client_sees_unauthorized_code(cluster: Stack):
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "client.mjs"), cluster.gateways[0], "not-a-jwt", "websocket",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    first = json.loads(out.decode().splitlines()[0])
    assert first["event"] == "connect_error"
    assert first["message"] == "unauthorized"
    assert first["data"]["code"] == "unauthorized"
