"""Presence and typing across sessions and nodes, and their cleanup."""

from __future__ import annotations

import asyncio
import time

from libs.testing.client import ChatClient, guild_with_members, uid
from libs.testing.fixtures import OFFLINE_GRACE_S, Stack


def statuses(rec, user_id: str) -> list[str]:
    return [e["status"] for e in rec.events["presence"] if e["user_id"] == user_id]


async def wait_status(rec, user_id: str, status: str, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        seen = statuses(rec, user_id)
        if seen and seen[-1] == status:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"{user_id} never became {status}: {statuses(rec, user_id)}")


async def alice_seen_online_by_bob(http, cluster: Stack):
    """Alice (on node 1) and Bob (on node 2) share a guild; Bob has seen Alice come online.
    Returns (alice, bob, Alice's socket, Bob's socket)."""
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    await guild_with_members(bob, alice)
    b = await bob.connect()
    a1 = await alice.connect(g1)
    await wait_status(b, alice.user_id, "online")
    return alice, bob, a1, b


async def wait_offline_after_grace(b, user_id: str) -> None:
    """Offline arrives once the grace has run out, not before (and not much later)."""
    took = await wait_status(b, user_id, "offline", timeout=OFFLINE_GRACE_S + 5)
    assert OFFLINE_GRACE_S - 0.5 < took < OFFLINE_GRACE_S + 2.5, took


async def test_two_sessions_on_two_nodes_and_invisible(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice, bob, a1, b = await alice_seen_online_by_bob(http, cluster)
    a2 = await alice.connect(g2)
    # Bob's `ready` on a new session carries Alice's presence.
    b2 = await bob.connect(g1)
    assert {"user_id": alice.user_id, "status": "online"}.items() <= next(
        p for p in b2.events["ready"][0]["presences"] if p["user_id"] == alice.user_id).items()

    await a1.disconnect()
    await asyncio.sleep(0.5)
    assert statuses(b, alice.user_id)[-1] == "online"
    await a2.disconnect()
    await wait_offline_after_grace(b, alice.user_id)

    a3 = await alice.connect(g2)
    await wait_status(b, alice.user_id, "online")
    assert (await a3.call("presence:update", {"status": "invisible"}))["ok"]
    await wait_status(b, alice.user_id, "offline")
    assert (await a3.call("presence:update", {"status": "dnd", "activity": {"name": "<b>code</b>", "kind": "playing"}}))["ok"]
    await wait_status(b, alice.user_id, "dnd")
    last = [e for e in b.events["presence"] if e["user_id"] == alice.user_id][-1]
    assert last["activity"] == {"name": "&lt;b&gt;code&lt;/b&gt;", "kind": "playing"} and last["since"]
    assert (await a3.call("presence:update", {"status": "invisible"}))["ok"]
    await wait_status(b, alice.user_id, "offline")
    await a3.disconnect()
    await asyncio.sleep(0.5)
    # Invisible is never revealed: nothing but offline after it.
    assert statuses(b, alice.user_id)[-1] == "offline"
    b3 = await bob.connect(g2)
    assert all(p["user_id"] != alice.user_id for p in b3.events["ready"][0]["presences"])
    bad = await b3.call("presence:update", {"status": "busy"})
    assert bad["error"]["code"] == "invalid"
    await alice.close()
    await bob.close()


async def test_typing_is_shown_to_others_and_ends_by_itself(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    guild = await guild_with_members(alice, bob)
    ch = guild["text_channel"]
    a = await alice.connect()
    b = await bob.connect()
    assert (await a.call("typing:start", {"channel_id": ch}))["ok"]
    typing = (await b.wait_for("typing"))[0]
    assert typing == {"channel_id": ch, "user_id": alice.user_id, "expires_in_ms": 10000}
    started = time.monotonic()
    stop = (await b.wait_for("typing:stop", timeout=10))[0]
    assert stop == {"channel_id": ch, "user_id": alice.user_id}
    assert time.monotonic() - started < 8  # CHAT_TYPING_TTL_S=3 in the test cluster
    assert "typing" not in a.events  # the sender is not told about itself

    # Sending a message ends typing at once.
    assert (await a.call("typing:start", {"channel_id": ch}))["ok"]
    await b.wait_for("typing", 2)
    assert (await a.call("message:send", {"channel_id": ch, "content": "done", "nonce": "n"}))["ok"]
    await b.wait_for("typing:stop", 2, timeout=2)
    # Typing in a channel one is not in is refused.
    assert (await a.call("typing:start", {"channel_id": "999999999"}))["error"]["code"] == "not_found"
    await alice.close()
    await bob.close()


async def test_a_message_from_another_session_ends_typing(http, cluster: Stack):
    """Typing ends when its author's message is stored, whichever session or node sent it:
    presence sees messaging's message.created, not the gateway's socket."""
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    guild = await guild_with_members(alice, bob)
    ch = guild["text_channel"]
    typing_socket = await alice.connect(g1)
    sending_socket = await alice.connect(g2)
    b = await bob.connect(g1)
    assert (await typing_socket.call("typing:start", {"channel_id": ch}))["ok"]
    await b.wait_for("typing")
    started = time.monotonic()
    assert (await sending_socket.call("message:send", {"channel_id": ch, "content": "hi", "nonce": "x1"}))["ok"]
    stop = (await b.wait_for("typing:stop", timeout=5))[0]
    assert stop == {"channel_id": ch, "user_id": alice.user_id}
    assert time.monotonic() - started < 2  # not the expiry (CHAT_TYPING_TTL_S=3 in the test cluster)
    # Bob's own message ends nothing of Alice's (he was not typing).
    assert (await b.call("message:send", {"channel_id": ch, "content": "yo", "nonce": "x2"}))["ok"]
    await asyncio.sleep(0.5)
    assert len(b.events["typing:stop"]) == 1
    await alice.close()
    await bob.close()


async def test_last_disconnect_stops_typing(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    guild = await guild_with_members(alice, bob)
    a = await alice.connect()
    b = await bob.connect()
    assert (await a.call("typing:start", {"channel_id": guild["text_channel"]}))["ok"]
    await b.wait_for("typing")
    await a.disconnect()
    stop = (await b.wait_for("typing:stop", timeout=2))[0]
    assert stop["user_id"] == alice.user_id
    await bob.close()


async def test_a_reconnect_within_the_offline_grace_is_never_shown_offline(http, cluster: Stack):
    _g1, g2 = cluster.gateways
    alice, _bob, a1, b = await alice_seen_online_by_bob(http, cluster)
    seen = len(statuses(b, alice.user_id))
    await a1.disconnect()
    a2 = await alice.connect(g2)  # back within the grace, on the other node
    # Nothing is announced for a blip, so there is no event to await: watch past the grace.
    await asyncio.sleep(OFFLINE_GRACE_S + 1)
    assert statuses(b, alice.user_id)[seen:] == [], "a blip within the grace was shown"
    await a2.disconnect()
    await wait_offline_after_grace(b, alice.user_id)


async def test_a_burst_of_sessions_is_seen_whole(http, cluster: Stack):
    """Twenty members connect at once (their presence opens go in batches) and then leave
    at once (their closes too): an observer sees each come online, a later session's
    `ready` carries all of them, and each goes offline after the grace."""
    g1, g2 = cluster.gateways
    owner = await ChatClient(http, g1, uid("owner")).login()
    members = [await ChatClient(http, g1, uid(f"m{i}")).login() for i in range(20)]
    await guild_with_members(owner, *members)
    watch = await owner.connect(g2)
    socks = await asyncio.gather(*(m.connect(g1) for m in members))
    for m in members:
        await wait_status(watch, m.user_id, "online")
    later = await owner.connect(g1)
    shown = {p["user_id"]: p["status"] for p in later.events["ready"][0]["presences"]}
    assert all(shown.get(m.user_id) == "online" for m in members), shown
    await asyncio.gather(*(s.disconnect() for s in socks))
    for m in members:
        await wait_status(watch, m.user_id, "offline", timeout=OFFLINE_GRACE_S + 5)
    for c in (owner, *members):
        await c.close()
