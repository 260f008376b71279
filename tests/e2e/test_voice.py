"""Voice: join/update/move/leave across nodes, access rules, session and node cleanup,
LiveKit webhooks, and LiveKit outages that never fail a voice command."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from typing import Any

import jwt
import nats
import pytest
from livekit import api as lk

from libs.bus import schemas, subjects
from libs.testing.client import ChatClient, Recorder, guild_with_members, uid
from libs.testing.fixtures import Stack

# These tests sign with LiveKit's dev-mode secret ("secret"), shorter than PyJWT recommends for HS256.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

DEV_KEY = "devkey"
DEV_SECRET = "secret"  # CHAT_LIVEKIT_API_SECRET's default (dev mode)


def voice_channel(guild: dict[str, Any]) -> str:
    return next(c["id"] for c in guild["channels"] if c["kind"] == "voice")


def voice_bridge_ops(stack: Stack) -> str:
    proc = next(p for p in stack.cluster.processes if p.module == "voice_bridge")
    return f"http://127.0.0.1:{proc.ops_port}"


def states(rec: Recorder, **match: Any) -> list[dict[str, Any]]:
    return [e for e in rec.events["voice:state"] if all(e.get(k) == v for k, v in match.items())]


async def wait_state(rec: Recorder, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = states(rec, **match)
        if found:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no voice:state {match}; got {rec.events['voice:state']}")


async def new_voice_channel(owner: ChatClient, guild_id: str, name: str) -> str:
    ch = await owner.api("POST", f"/guilds/{guild_id}/channels", {"name": name, "kind": "voice"}, expect=201)
    await asyncio.sleep(0.3)  # sockets enter the new channel's room through a bus broadcast
    return str(ch["id"])


def signed_webhook(body: dict[str, Any], key: str = DEV_KEY, secret: str = DEV_SECRET) -> tuple[str, str]:
    text = json.dumps(body)
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    token = lk.AccessToken(key, secret).with_sha256(digest).to_jwt()
    return text, token


def participant_left(channel_id: str, user_id: str) -> dict[str, Any]:
    return {"event": "participant_left", "id": uuid.uuid4().hex, "createdAt": str(int(time.time())),
            "room": {"name": f"voice-{channel_id}"}, "participant": {"identity": user_id}}


async def test_join_update_move_leave_seen_on_the_other_node(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice"), "Alice V").login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    guild = await guild_with_members(alice, bob)
    lounge = voice_channel(guild)
    a = await alice.connect()
    b = await bob.connect()

    ack = await a.call("voice:join", {"channel_id": lounge})
    assert ack["ok"], ack
    assert ack["voice_state"] == {"channel_id": lounge, "user_id": alice.user_id, "self_mute": False,
                                  "self_deaf": False, "connected": True}
    lkit = ack["livekit"]
    assert lkit["url"] == "ws://127.0.0.1:7880" and lkit["room"] == f"voice-{lounge}"
    claims = jwt.decode(lkit["token"], DEV_SECRET, algorithms=["HS256"], issuer=DEV_KEY)
    assert claims["sub"] == alice.user_id and claims["name"] == "Alice V"
    assert claims["video"]["roomJoin"] is True and claims["video"]["room"] == f"voice-{lounge}"
    assert claims["video"].get("canPublish", True) is True
    assert 0 < claims["exp"] - time.time() <= 3700
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(lkit["token"], "another-secret", algorithms=["HS256"])

    seen = await wait_state(b, channel_id=lounge, user_id=alice.user_id, connected=True)
    assert seen == ack["voice_state"]

    ack = await a.call("voice:update", {"self_mute": True})
    assert ack["ok"] and ack["voice_state"]["self_mute"] is True and ack["voice_state"]["self_deaf"] is False
    await wait_state(b, channel_id=lounge, user_id=alice.user_id, self_mute=True, connected=True)
    ack = await a.call("voice:update", {"self_deaf": True})
    assert ack["voice_state"]["self_mute"] is True and ack["voice_state"]["self_deaf"] is True

    second = await new_voice_channel(alice, guild["id"], "stage")
    ack = await a.call("voice:join", {"channel_id": second, "self_mute": True})
    assert ack["ok"], ack
    assert ack["voice_state"]["channel_id"] == second and ack["livekit"]["room"] == f"voice-{second}"
    await wait_state(b, channel_id=lounge, user_id=alice.user_id, connected=False)
    await wait_state(b, channel_id=second, user_id=alice.user_id, connected=True)

    n_before = len(b.events["voice:state"])
    assert (await a.call("voice:leave", {})) == {"ok": True}
    gone = await wait_state(b, channel_id=second, user_id=alice.user_id, connected=False)
    assert gone["self_mute"] is True
    assert (await a.call("voice:leave", {})) == {"ok": True}  # idempotent
    ack = await a.call("voice:update", {"self_mute": False})
    assert not ack["ok"] and ack["error"]["code"] == "conflict"
    await asyncio.sleep(0.3)
    assert len(b.events["voice:state"]) == n_before + 1  # the second leave announced nothing
    await alice.close()
    await bob.close()


async def test_access_rules(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    carol = await ChatClient(http, g2, uid("carol")).login()
    guild = await guild_with_members(alice, bob)
    a = await alice.connect()
    c = await carol.connect()

    ack = await c.call("voice:join", {"channel_id": voice_channel(guild)})
    assert not ack["ok"] and ack["error"]["code"] == "not_found", ack
    ack = await a.call("voice:join", {"channel_id": guild["text_channel"]})
    assert not ack["ok"] and ack["error"]["code"] == "invalid", ack
    ack = await a.call("voice:join", {"channel_id": "987654321987"})
    assert not ack["ok"] and ack["error"]["code"] == "not_found", ack
    dm = await a.call("dm:send", {"recipient_id": bob.user_id, "content": "hi", "nonce": "dm1"})
    assert dm["ok"], dm
    ack = await a.call("voice:join", {"channel_id": dm["channel_id"]})
    assert not ack["ok"] and ack["error"]["code"] == "invalid", ack
    for bad in ({}, {"channel_id": "x"}, {"channel_id": voice_channel(guild), "self_mute": "yes"}):
        ack = await a.call("voice:join", bad)
        assert not ack["ok"] and ack["error"]["code"] == "invalid", (bad, ack)
    ack = await a.call("voice:update", {"self_mute": True})
    assert not ack["ok"] and ack["error"]["code"] == "conflict"
    assert (await a.call("voice:leave", {})) == {"ok": True}
    await alice.close()
    await carol.close()


async def test_the_joining_session_owns_the_state(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    guild = await guild_with_members(alice, bob)
    lounge = voice_channel(guild)
    a1 = await alice.connect()
    a2 = await alice.connect(g2)
    b = await bob.connect()

    assert (await a1.call("voice:join", {"channel_id": lounge}))["ok"]
    await wait_state(b, channel_id=lounge, user_id=alice.user_id, connected=True)
    await a2.disconnect()  # another session of alice ends: she stays in voice
    await asyncio.sleep(1.0)
    assert not states(b, user_id=alice.user_id, connected=False)
    await a1.disconnect()  # the session in voice ends
    await wait_state(b, channel_id=lounge, user_id=alice.user_id, connected=False)

    # and a new session starts with no voice state
    a3 = await alice.connect()
    ack = await a3.call("voice:update", {"self_mute": True})
    assert ack["error"]["code"] == "conflict"
    await alice.close()
    await bob.close()


async def test_livekit_participant_left_webhook_ends_the_state(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    guild = await guild_with_members(alice, bob)
    lounge = voice_channel(guild)
    a = await alice.connect()
    b = await bob.connect()
    assert (await a.call("voice:join", {"channel_id": lounge}))["ok"]
    await wait_state(b, channel_id=lounge, connected=True)
    url = f"{voice_bridge_ops(cluster)}/livekit/webhook"

    # bad signatures and tampered bodies are refused and change nothing
    text, bad_token = signed_webhook(participant_left(lounge, alice.user_id), secret="not-the-secret")
    _, other_body_token = signed_webhook(participant_left(lounge, alice.user_id))
    for headers in ({}, {"Authorization": bad_token}, {"Authorization": other_body_token},
                    {"Authorization": "garbage"}):
        body = text
        async with http.post(url, data=body, headers={"Content-Type": "application/webhook+json", **headers}) as r:
            assert r.status == 401, await r.text()
    # a participant_left for a room the user is no longer in is ignored
    other, token = signed_webhook(participant_left("123", alice.user_id))
    async with http.post(url, data=other, headers={"Authorization": token}) as r:
        assert r.status == 200 and (await r.json())["applied"] is False
    # other events are acknowledged
    joined, token = signed_webhook({"event": "participant_joined", "room": {"name": f"voice-{lounge}"},
                                    "participant": {"identity": alice.user_id}})
    async with http.post(url, data=joined, headers={"Authorization": token}) as r:
        assert r.status == 200
    assert (await a.call("voice:update", {"self_mute": True}))["ok"]

    body, token = signed_webhook(participant_left(lounge, alice.user_id))
    async with http.post(url, data=body, headers={"Authorization": token,
                                                  "Content-Type": "application/webhook+json"}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["applied"] is True
    left = await wait_state(b, channel_id=lounge, user_id=alice.user_id, connected=False)
    assert left["self_mute"] is True
    ack = await a.call("voice:update", {"self_mute": False})
    assert ack["error"]["code"] == "conflict"
    async with http.post(url, data=body, headers={"Authorization": token}) as r:  # a LiveKit retry
        assert r.status == 200 and (await r.json())["applied"] is False
    await alice.close()
    await bob.close()


async def test_sessions_gone_from_presence_ends_voice_of_a_dead_node(http, cluster: Stack):
    g1, g2 = cluster.gateways
    node1 = cluster.cluster.gateways[0].name
    alice = await ChatClient(http, g1, uid("alice")).login()
    dave = await ChatClient(http, g1, uid("dave")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    guild = await guild_with_members(alice, bob, dave)
    lounge = voice_channel(guild)
    a = await alice.connect()
    d = await dave.connect()
    b = await bob.connect()
    assert (await a.call("voice:join", {"channel_id": lounge}))["ok"]
    assert (await d.call("voice:join", {"channel_id": lounge}))["ok"]
    await wait_state(b, user_id=dave.user_id, connected=True)
    session_a = a.events["ready"][0]["session_id"]

    nc = await nats.connect(cluster.servers.nats.url)
    try:
        # other presence announcements on the subject are ignored
        await nc.publish(subjects.presence_events(), b'{"user_id": "x", "status": "offline"}')
        await nc.publish(subjects.presence_events(), b"not json")
        # a session that is not alice's voice session changes nothing
        wrong = schemas.SessionsGone(node=node1, sessions=[schemas.SessionRef(user_id=alice.user_id,
                                                                              session_id="nope")])
        await nc.publish(subjects.presence_events(), schemas.dumps(wrong))
        await asyncio.sleep(0.5)
        assert not states(b, user_id=alice.user_id, connected=False)
        gone = schemas.SessionsGone(node=node1, sessions=[schemas.SessionRef(user_id=alice.user_id,
                                                                             session_id=session_a)])
        await nc.publish(subjects.presence_events(), schemas.dumps(gone))
        await wait_state(b, channel_id=lounge, user_id=alice.user_id, connected=False)
        assert not states(b, user_id=dave.user_id, connected=False)
        # an empty list: every session of the node
        await nc.publish(subjects.presence_events(), schemas.dumps(schemas.SessionsGone(node=node1, sessions=[])))
        await wait_state(b, channel_id=lounge, user_id=dave.user_id, connected=False)
    finally:
        await nc.close()
    await alice.close()
    await dave.close()
    await bob.close()


async def _black_hole() -> tuple[asyncio.AbstractServer, int, list[int]]:
    """A "LiveKit" that accepts connections and never answers."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        await reader.read()  # until the caller gives up and closes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, accepted


async def test_livekit_outage_never_fails_leave(http, own_stack):
    hole, port, accepted = await _black_hole()
    secret = "configured-secret-0123456789abcdef"
    stack = own_stack(gateways=1, CHAT_LIVEKIT_URL=f"ws://127.0.0.1:{port}", CHAT_LIVEKIT_TIMEOUT_S="0.5",
                      CHAT_LIVEKIT_API_KEY="prodkey", CHAT_LIVEKIT_API_SECRET=secret)
    try:
        (g1,) = stack.gateways
        alice = await ChatClient(http, g1, uid("alice")).login()
        bob = await ChatClient(http, g1, uid("bob")).login()
        guild = await guild_with_members(alice, bob)
        lounge = voice_channel(guild)
        a = await alice.connect()
        b = await bob.connect()
        for i in range(8):
            ack = await a.call("voice:join", {"channel_id": lounge})
            assert ack["ok"], ack
            if i == 0:
                claims = jwt.decode(ack["livekit"]["token"], secret, algorithms=["HS256"],
                                    issuer="prodkey")
                assert claims["sub"] == alice.user_id
            started = time.monotonic()
            assert (await a.call("voice:leave", {})) == {"ok": True}
            assert time.monotonic() - started < 0.5  # the LiveKit call runs in the background
        await wait_state(b, user_id=alice.user_id, connected=False)
        await asyncio.sleep(1.0)
        assert accepted, "voice-bridge never tried LiveKit"
        # the breaker is open now: the next calls are refused at once, leave still answers ok
        for _ in range(2):
            assert (await a.call("voice:join", {"channel_id": lounge}))["ok"]
            assert (await a.call("voice:leave", {})) == {"ok": True}
        await asyncio.sleep(0.3)
        ops = voice_bridge_ops(stack)
        async with http.get(f"{ops}/status/circuit-breakers") as r:
            assert (await r.json())["livekit"]["state"] == "open"
        async with http.get(f"{ops}/metrics") as r:
            text = await r.text()
        assert 'chat_voice_livekit_calls_total{call="remove_participant",outcome="error"}' in text
        assert 'chat_voice_livekit_calls_total{call="remove_participant",outcome="rejected"}' in text
        # a webhook signed with the dev secret is refused by a node configured with another
        body, token = signed_webhook(participant_left(lounge, alice.user_id))
        async with http.post(f"{ops}/livekit/webhook", data=body, headers={"Authorization": token}) as r:
            assert r.status == 401
        await alice.close()
        await bob.close()
    finally:
        hole.close()


async def test_redis_away_answers_unavailable_and_leave_of_nobody_is_fast(http, own_stack):
    stack = own_stack(gateways=1)
    (g1,) = stack.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    guild = await guild_with_members(alice)
    a = await alice.connect()
    assert (await a.call("voice:join", {"channel_id": voice_channel(guild)}))["ok"]
    stack.servers.redis.stop()
    try:
        ack = await a.call("voice:update", {"self_mute": True})
        assert not ack["ok"] and ack["error"]["code"] == "unavailable", ack
        ack = await a.call("voice:join", {"channel_id": voice_channel(guild)})
        assert not ack["ok"] and ack["error"]["code"] == "unavailable", ack
    finally:
        await alice.close()

