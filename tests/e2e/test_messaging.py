"""Messaging: edits, deletes, DMs, gap-free seqs across nodes, and `sync`."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from libs.bus import schemas
from libs.db.database import Database
from libs.testing.client import ChatClient, guild_with_members, uid
from libs.testing.fixtures import Stack
from libs.testing.wire_fuzz import metric_total
from services.messaging.adapters.store import Store


async def sync_all(sock, channel_id: str, after: int) -> list[dict]:
    """Call `sync` until complete; return every event."""
    events: list[dict] = []
    calls = 0
    while True:
        calls += 1
        ack = await sock.call("sync", {"channels": {channel_id: after}})
        assert ack["ok"], ack
        page = ack["channels"][channel_id]
        events += page["events"]
        if page["events"]:
            after = page["events"][-1]["seq"]
        if page["complete"]:
            return events
        assert calls < 100


async def test_sync_returns_exactly_the_missed_events_in_order_across_pages(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    guild = await guild_with_members(alice, bob)
    ch = guild["text_channel"]
    a = await alice.connect()
    b = await bob.connect()
    ack = await a.call("message:send", {"channel_id": ch, "content": "seen live", "nonce": "n-live"})
    await b.wait_for("message:created")
    await bob.close()

    sent = []
    for i in range(250):
        ack = await a.call("message:send", {"channel_id": ch, "content": f"missed {i}", "nonce": f"n{i}"})
        assert ack["ok"], ack
        sent.append(ack["message"])
    expected = [("message:created", m["id"]) for m in sent]
    for m in sent[:20]:
        ack = await a.call("message:edit", {"channel_id": ch, "message_id": m["id"], "content": "edited"})
        assert ack["ok"] and ack["message"]["edited_at"], ack
        expected.append(("message:updated", m["id"]))
    for m in sent[20:30]:
        ack = await a.call("message:delete", {"channel_id": ch, "message_id": m["id"]})
        assert ack == {"ok": True}, ack
        expected.append(("message:deleted", m["id"]))

    b2 = await bob.connect()
    last_seq = next(c["last_seq"] for c in b2.events["ready"][0]["channels"] if c["id"] == ch)
    assert last_seq == 1 + len(expected)
    events = await sync_all(b2, ch, 1)
    assert [e["seq"] for e in events] == list(range(2, 2 + len(expected)))
    got = [(e["event"], e["message"]["id"] if "message" in e else e["message_id"]) for e in events]
    assert got == expected
    updated = next(e for e in events if e["event"] == "message:updated")
    assert updated["message"]["content"] == "edited" and updated["message"]["seq"] < updated["seq"]
    deleted_ids = {e["message_id"] for e in events if e["event"] == "message:deleted"}
    assert all(e["message"]["content"] == "" for e in events
               if e["event"] == "message:created" and e["message"]["id"] in deleted_ids)
    await alice.close()
    await bob.close()


async def test_fifty_senders_on_two_nodes_give_gap_free_seqs(http, cluster: Stack):
    g1, g2 = cluster.gateways
    owner = await ChatClient(http, g1, uid("own")).login()
    users = [await ChatClient(http, (g1, g2)[i % 2], uid(f"u{i}-")).login() for i in range(50)]
    guild = await guild_with_members(owner, *users)
    ch = guild["text_channel"]
    socks = [await u.connect() for u in users]
    acks = await asyncio.gather(*(s.call("message:send", {"channel_id": ch, "content": f"m{i}", "nonce": "x"})
                                  for i, s in enumerate(socks)))
    assert all(a["ok"] for a in acks)
    seqs = sorted(a["message"]["seq"] for a in acks)
    assert seqs == list(range(1, 51))
    for s in socks[:5] + socks[-5:]:
        live = {e["seq"] for e in s.events["message:created"]}
        recovered = {e["seq"] for e in await sync_all(s, ch, 0)}
        assert live <= recovered == set(range(1, 51))
    for u in users:
        await u.close()


async def test_dm_between_guild_members_and_refusal_for_strangers(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    carol = await ChatClient(http, g2, uid("carol")).login()
    await guild_with_members(alice, bob)
    a = await alice.connect()
    b = await bob.connect()
    c = await carol.connect()
    ack = await a.call("dm:send", {"recipient_id": bob.user_id, "content": "psst", "nonce": "d1"})
    assert ack["ok"], ack
    got = (await b.wait_for("message:created"))[0]
    assert got["channel_id"] == ack["channel_id"] and got["message"]["content"] == "psst"
    # The DM channel is reused, and both sockets now receive it through its room.
    ack2 = await b.call("dm:send", {"recipient_id": alice.user_id, "content": "hi back", "nonce": "d2"})
    assert ack2["ok"] and ack2["channel_id"] == ack["channel_id"]
    assert (await a.wait_for("message:created", 2))[-1]["message"]["content"] == "hi back"
    refused = await c.call("dm:send", {"recipient_id": alice.user_id, "content": "hello?", "nonce": "d3"})
    assert refused["error"]["code"] == "forbidden"
    missing = await c.call("dm:send", {"recipient_id": "nobody-" + uid(""), "content": "x", "nonce": "d4"})
    assert missing["error"]["code"] == "not_found"
    # Friends may DM without a shared guild, once both sides accepted.
    await carol.api("PUT", f"/users/@me/friends/{alice.user_id}", expect=200)
    assert (await c.call("dm:send", {"recipient_id": alice.user_id, "content": "x", "nonce": "d5"}))["error"]["code"] == "forbidden"
    assert (await alice.api("PUT", f"/users/@me/friends/{carol.user_id}", expect=200))["status"] == "friends"
    assert (await c.call("dm:send", {"recipient_id": alice.user_id, "content": "x", "nonce": "d5"}))["ok"]
    friends = await alice.api("GET", "/users/@me/friends", expect=200)
    assert [f["id"] for f in friends["friends"]] == [carol.user_id]
    for u in (alice, bob, carol):
        await u.close()


XSS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>hi",
    "<a href=\"javascript:alert(1)\">click</a>",
    "<svg/onload=alert(1)>x",
    "<iframe src=//evil></iframe>y",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "<scr<script>ipt>alert(1)</script>",
    "\uff1cscript\uff1ealert(1)\uff1c/script\uff1e",
    "<div style=\"background:url(javascript:alert(1))\">z</div>",
    "<<b>b>bold",
]


@pytest.mark.parametrize("payload", XSS)
async def test_stored_content_is_inert(http, cluster: Stack, payload: str):
    alice = await ChatClient(http, cluster.gateways[0], uid("x")).login()
    guild = await guild_with_members(alice)
    a = await alice.connect()
    ack = await a.call("message:send", {"channel_id": guild["text_channel"], "content": payload, "nonce": "x"})
    if ack["ok"]:
        content = ack["message"]["content"]
        lowered = content.lower()
        assert "<" not in content and ">" not in content
        assert "javascript:" not in lowered or "<" not in content
    else:
        assert ack["error"]["code"] == "invalid"
    await alice.close()


@pytest.mark.parametrize("text", ["a < b & c", "x & y", "1 > 0", "&amp;", "if (a<b && c>d) {}"])
async def test_plain_text_round_trips(http, cluster: Stack, text: str):
    import html

    alice = await ChatClient(http, cluster.gateways[0], uid("t")).login()
    guild = await guild_with_members(alice)
    a = await alice.connect()
    ack = await a.call("message:send", {"channel_id": guild["text_channel"], "content": text, "nonce": "t"})
    assert ack["ok"], ack
    assert ack["message"]["content"] in (text, html.escape(text, quote=False))
    await alice.close()


async def test_one_nonce_sent_at_once_from_two_nodes_is_one_message_and_seqs_stay_gap_free(http, cluster: Stack):
    g1, g2 = cluster.gateways
    owner = await ChatClient(http, g1, uid("own")).login()
    alice = await ChatClient(http, g1, uid("alice")).login()
    guild = await guild_with_members(owner, alice)
    ch = guild["text_channel"]
    socks = [await alice.connect(g1), await alice.connect(g2), await alice.connect(g1), await alice.connect(g2)]
    for round_ in range(5):
        acks = await asyncio.gather(*(s.call("message:send", {"channel_id": ch, "content": f"r{round_}",
                                                              "nonce": f"same-{round_}"})
                                      for s in socks for _ in range(3)))
        assert all(a["ok"] for a in acks), acks
        assert len({a["message"]["id"] for a in acks}) == 1
        assert {a["message"]["seq"] for a in acks} == {round_ + 1}
    follow = await socks[0].call("message:send", {"channel_id": ch, "content": "after", "nonce": "after"})
    assert follow["message"]["seq"] == 6  # five messages, then this one: no seq was lost to a duplicate
    events = await sync_all(socks[0], ch, 0)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    await alice.close()


async def test_send_checks_reply_mentions_and_channel_kind(http, cluster: Stack):
    g1, _ = cluster.gateways
    owner = await ChatClient(http, g1, uid("own")).login()
    bob = await ChatClient(http, g1, uid("bob")).login()
    stranger = await ChatClient(http, g1, uid("str")).login()
    guild = await guild_with_members(owner, bob)
    other = await guild_with_members(stranger)
    ch = guild["text_channel"]
    s = await owner.connect()
    first = await s.call("message:send", {"channel_id": ch, "content": "first", "nonce": "c1"})
    assert first["ok"], first
    ok = await s.call("message:send", {"channel_id": ch, "content": "re", "nonce": "c2",
                                       "reply_to": first["message"]["id"], "mentions": [bob.user_id]})
    assert ok["ok"] and ok["message"]["reply_to"] == first["message"]["id"]
    assert ok["message"]["mentions"] == [bob.user_id] and ok["message"]["seq"] == 2
    s2 = await stranger.connect()
    elsewhere = await s2.call("message:send", {"channel_id": other["text_channel"], "content": "x", "nonce": "e1"})
    bad_reply = await s.call("message:send", {"channel_id": ch, "content": "x", "nonce": "c3",
                                              "reply_to": elsewhere["message"]["id"]})
    assert bad_reply["error"]["code"] == "not_found"
    bad_mention = await s.call("message:send", {"channel_id": ch, "content": "x", "nonce": "c4",
                                                "mentions": [bob.user_id, stranger.user_id]})
    assert bad_mention["error"]["code"] == "invalid" and stranger.user_id in bad_mention["error"]["message"]
    voice_id = next(c["id"] for c in guild["channels"] if c["kind"] == "voice")
    voice = await s.call("message:send", {"channel_id": voice_id, "content": "x", "nonce": "c5"})
    assert voice["error"]["code"] == "invalid"
    not_mine = await s.call("message:send", {"channel_id": other["text_channel"], "content": "x", "nonce": "c6"})
    assert not_mine["error"]["code"] == "not_found"
    # none of the refused sends took a seq
    nxt = await s.call("message:send", {"channel_id": ch, "content": "next", "nonce": "c7"})
    assert nxt["message"]["seq"] == 3
    await owner.close()
    await stranger.close()


async def _batched_sends(stack: Stack) -> tuple[float, float]:
    """(writes, batches) of messaging's group commit so far."""
    (svc,) = [p for p in stack.cluster.processes if p.module == "messaging"]
    ops = f"http://127.0.0.1:{svc.ops_port}"
    return (await metric_total(ops, "chat_db_batch_size_sum", batch="message_send"),
            await metric_total(ops, "chat_db_batch_size_count", batch="message_send"))


async def test_a_burst_of_sends_is_group_committed_and_each_send_keeps_its_own_answer(http, cluster: Stack):
    g1, g2 = cluster.gateways
    owner = await ChatClient(http, g1, uid("own")).login()
    users = [await ChatClient(http, (g1, g2)[i % 2], uid(f"b{i}-")).login() for i in range(12)]
    guild = await guild_with_members(owner, *users)
    stranger = await ChatClient(http, g1, uid("str")).login()
    elsewhere = (await guild_with_members(stranger))["text_channel"]
    texts = [c["id"] for c in guild["channels"] if c["kind"] == "text"]
    more = [(await owner.api("POST", f"/guilds/{guild['id']}/channels", {"name": f"c{i}", "kind": "text"},
                             expect=201))["id"] for i in range(2)]
    channels = texts + more
    voice = next(c["id"] for c in guild["channels"] if c["kind"] == "voice")
    socks = [await u.connect() for u in users]
    writes_before, batches_before = await _batched_sends(cluster)

    calls = []  # (expected outcome, channel or dup group, call)
    for round_ in range(4):
        for i, s in enumerate(socks):
            ch = channels[(i + round_) % len(channels)]
            calls.append(("ok", ch, s.call("message:send", {"channel_id": ch, "content": f"{round_}/{i}",
                                                            "nonce": f"n{round_}-{i}"})))
        calls.append(("not_found", None, socks[round_].call("message:send", {
            "channel_id": elsewhere, "content": "x", "nonce": f"away{round_}"})))
        calls.append(("invalid", None, socks[round_].call("message:send", {
            "channel_id": voice, "content": "x", "nonce": f"voice{round_}"})))
        # the same nonce twice at once: one message, both told about it
        for _ in range(2):
            calls.append((f"dup{round_}", channels[0], socks[5].call("message:send", {
                "channel_id": channels[0], "content": "d", "nonce": f"twice{round_}"})))
    acks = await asyncio.gather(*(c for _, _, c in calls))

    per_channel: dict[str, set[int]] = {}
    dup_ids: dict[str, set[str]] = {}
    for (want, ch, _), ack in zip(calls, acks, strict=True):
        if want == "ok" or want.startswith("dup"):
            assert ack["ok"], ack
            assert ack["message"]["channel_id"] == ch
            per_channel.setdefault(ch, set()).add(ack["message"]["seq"])
            if want != "ok":
                dup_ids.setdefault(want, set()).add(ack["message"]["id"])
        else:
            assert ack["error"]["code"] == want, ack
    assert len(dup_ids) == 4 and all(len(ids) == 1 for ids in dup_ids.values()), dup_ids
    for ch, seqs in per_channel.items():
        assert seqs == set(range(1, len(seqs) + 1)), (ch, sorted(seqs))  # gap-free: refusals took no seq
        assert [e["seq"] for e in await sync_all(socks[0], ch, 0)] == sorted(seqs)
    assert sum(len(s) for s in per_channel.values()) == 4 * len(socks) + 4
    writes, batches = await _batched_sends(cluster)
    assert writes - writes_before >= 4 * len(socks) + 8  # the sends went through the group commit
    assert batches - batches_before < writes - writes_before  # and some went together
    for u in users + [owner, stranger]:
        await u.close()


async def test_sync_of_several_channels_keeps_order_errors_and_budget(http, cluster: Stack):
    """The store's `sync` (one statement per channel) against the cluster's database:
    channels answered in the order given, refusals per channel, a page per channel and a
    budget spent in that order."""
    alice = await ChatClient(http, cluster.gateways[0], uid("alice")).login()
    stranger = await ChatClient(http, cluster.gateways[0], uid("stranger")).login()
    guild = await guild_with_members(alice)
    other = await guild_with_members(stranger)
    ch1 = guild["text_channel"]
    ch2 = (await alice.api("POST", f"/guilds/{guild['id']}/channels", {"name": "two", "kind": "text"}, expect=201))["id"]
    a = await alice.connect()
    for i in range(5):
        assert (await a.call("message:send", {"channel_id": ch1, "content": f"one {i}", "nonce": f"a{i}"}))["ok"]
    for i in range(3):
        assert (await a.call("message:send", {"channel_id": ch2, "content": f"two {i}", "nonce": f"b{i}"}))["ok"]
    await alice.close()

    db = Database(cluster.cluster.database_url)
    await db.start()
    try:
        assert await db.wait_ready(10)
        store = Store(db)
        me = schemas.UserRef(id=alice.user_id, name=alice.name)
        asked = {ch1: 0, "abc": 0, other["text_channel"]: 0, ch2: 1, "999999999999": 0}
        got = (await store.sync(me, asked, page=3, budget=4)).channels
        assert list(got) == list(asked)  # the order given
        one, two = got[ch1], got[ch2]
        assert [msgspec.json.decode(e)["seq"] for e in one.events] == [1, 2, 3] and not one.complete  # a page
        assert [msgspec.json.decode(e)["seq"] for e in two.events] == [2] and not two.complete  # the budget's rest
        assert one.last_seq == 5 and two.last_seq == 3
        for refused in ("abc", other["text_channel"], "999999999999"):
            assert got[refused].error is not None and got[refused].error.code == "not_found", refused
        # enough budget: everything after the given seqs, complete
        got = (await store.sync(me, {ch2: 1, ch1: 3}, page=100, budget=1000)).channels
        assert [msgspec.json.decode(e)["seq"] for e in got[ch2].events] == [2, 3] and got[ch2].complete
        assert [msgspec.json.decode(e)["seq"] for e in got[ch1].events] == [4, 5] and got[ch1].complete
        # nothing missed: complete with no events; budget 0: nothing, not complete where events remain
        got = (await store.sync(me, {ch1: 5, ch2: 0}, page=100, budget=0)).channels
        assert got[ch1].events == [] and got[ch1].complete
        assert got[ch2].events == [] and not got[ch2].complete
    finally:
        await db.close()
