"""Moderation end to end: kick, ban, unban and timeout through the gateway, the
moderation service, Postgres, every gateway node and the Socket.IO adapter."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from libs.testing.client import ChatClient, Recorder, guild_with_members, uid
from libs.testing.fixtures import Stack


async def db_fetch(stack: Stack, query: str, *args):
    conn = await asyncpg.connect(stack.cluster.database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def moderation_metric(http: aiohttp.ClientSession, stack: Stack, name: str) -> float:
    proc = next(p for p in stack.cluster.processes if p.module == "moderation")
    async with http.get(f"http://127.0.0.1:{proc.ops_port}/metrics") as r:
        text = await r.text()
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


async def set_role(owner: ChatClient, guild_id: str, user: ChatClient, role: str) -> None:
    await owner.api("PUT", f"/guilds/{guild_id}/members/{user.user_id}", {"role": role}, expect=200)


async def never_receives(rec: Recorder, event: str, match, wait: float = 0.5) -> None:
    await asyncio.sleep(wait)
    assert not [e for e in rec.events[event] if match(e)], rec.events[event]


def error_code(ack: dict) -> str:
    assert ack["ok"] is False, ack
    return ack["error"]["code"]


async def test_permission_matrix(http, cluster: Stack):
    g1, g2 = cluster.gateways
    owner = await ChatClient(http, g1, uid("own")).login()
    admin = await ChatClient(http, g2, uid("adm")).login()
    mod = await ChatClient(http, g1, uid("mod")).login()
    mod2 = await ChatClient(http, g2, uid("mdb")).login()
    member = await ChatClient(http, g2, uid("mem")).login()
    member2 = await ChatClient(http, g1, uid("mbb")).login()
    outsider = await ChatClient(http, g1, uid("out")).login()
    guild = await guild_with_members(owner, admin, mod, mod2, member, member2)
    gid = guild["id"]
    await set_role(owner, gid, admin, "admin")
    await set_role(owner, gid, mod, "moderator")
    await set_role(owner, gid, mod2, "moderator")
    await outsider.api("GET", "/users/@me", expect=200)  # a known user who is not a member
    socks = {c.user_id: await c.connect() for c in (owner, admin, mod, mod2, member, member2, outsider)}

    async def code(actor: ChatClient, event: str, target: str, guild_id: str = gid, **extra) -> str:
        ack = await socks[actor.user_id].call(event, {"guild_id": guild_id, "user_id": target, **extra})
        return "ok" if ack == {"ok": True} else error_code(ack)

    refused = [
        # a plain member moderates nobody
        (member, "mod:kick", member2.user_id, "forbidden"),
        (member, "mod:ban", member2.user_id, "forbidden"),
        (member, "mod:timeout", member2.user_id, "forbidden"),
        (member, "mod:unban", outsider.user_id, "forbidden"),
        # equal or higher rank, the owner, oneself
        (mod, "mod:kick", mod2.user_id, "forbidden"),
        (mod, "mod:ban", admin.user_id, "forbidden"),
        (mod, "mod:timeout", owner.user_id, "forbidden"),
        (mod, "mod:kick", mod.user_id, "forbidden"),
        (admin, "mod:ban", owner.user_id, "forbidden"),
        (admin, "mod:kick", admin.user_id, "forbidden"),
        (owner, "mod:kick", owner.user_id, "forbidden"),
        (owner, "mod:ban", owner.user_id, "forbidden"),
        # targets that are not members (kick/timeout), users that do not exist (ban)
        (mod, "mod:kick", outsider.user_id, "not_found"),
        (mod, "mod:timeout", outsider.user_id, "not_found"),
        (mod, "mod:ban", uid("ghost"), "not_found"),
        (mod, "mod:unban", member.user_id, "not_found"),  # not banned
        # a caller who is not a member cannot see the guild
        (outsider, "mod:kick", member.user_id, "not_found"),
        (outsider, "mod:ban", member.user_id, "not_found"),
        (outsider, "mod:timeout", member.user_id, "not_found"),
        (outsider, "mod:unban", member.user_id, "not_found"),
    ]
    for actor, event, target, expected in refused:
        extra = {"duration_s": 60} if event == "mod:timeout" else {}
        assert await code(actor, event, target, **extra) == expected, (actor.user_id, event, target)

    for event in ("mod:kick", "mod:ban", "mod:unban"):
        assert await code(owner, event, member.user_id, guild_id="987654321987") == "not_found"
    assert await code(owner, "mod:timeout", member.user_id, guild_id="987654321987", duration_s=5) == "not_found"

    # payloads that fail validation
    assert await code(owner, "mod:timeout", member.user_id) == "invalid"  # duration_s is required
    assert await code(owner, "mod:timeout", member.user_id, duration_s=0) == "invalid"
    assert await code(owner, "mod:ban", member.user_id, duration_s="long") == "invalid"
    assert await code(owner, "mod:kick", member.user_id, guild_id="abc") == "invalid"
    assert await code(owner, "mod:kick", "bad user id!") == "invalid"
    assert error_code(await socks[owner.user_id].call("mod:kick", "not an object")) == "invalid"

    # strictly lower ranks are fair game
    assert await code(mod, "mod:timeout", member.user_id, duration_s=60) == "ok"
    assert await code(admin, "mod:timeout", mod.user_id, duration_s=60) == "ok"
    assert await code(owner, "mod:timeout", admin.user_id, duration_s=60) == "ok"
    assert await code(admin, "mod:kick", mod2.user_id) == "ok"
    assert await code(mod, "mod:ban", member2.user_id, reason="spam") == "ok"
    assert await code(mod, "mod:unban", member2.user_id) == "ok"
    # banning someone who is not a member keeps them out
    assert await code(mod, "mod:ban", outsider.user_id) == "ok"
    invite = await owner.api("POST", f"/guilds/{gid}/invites", expect=201)
    body = await outsider.api("POST", f"/invites/{invite['code']}", expect=403)
    assert body["error"]["code"] == "forbidden"
    # nothing was refused silently: every refusal left the guild as it was
    info = await owner.api("GET", f"/guilds/{gid}", expect=200)
    roles = {m["user_id"]: m["role"] for m in info["members"]}
    assert roles == {owner.user_id: "owner", admin.user_id: "admin", mod.user_id: "moderator",
                     member.user_id: "member"}
    for c in (owner, admin, mod, mod2, member, member2, outsider):
        await c.close()


async def test_kick_removes_the_member_everywhere_and_they_may_rejoin(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    carol = await ChatClient(http, g2, uid("carol")).login()
    guild = await guild_with_members(alice, bob, carol)
    gid, ch = guild["id"], guild["text_channel"]
    a = await alice.connect()
    b1 = await bob.connect(g1)  # the target has a socket on each node
    b2 = await bob.connect(g2)
    c = await carol.connect()
    acks_before = await moderation_metric(http, cluster, "chat_moderation_control_acks_total")

    ack = await a.call("mod:kick", {"guild_id": gid, "user_id": bob.user_id, "reason": "<b>off-topic</b>"})
    assert ack == {"ok": True}
    for sock in (b1, b2):
        event = (await sock.wait_for("moderation"))[0]
        assert event == {"action": "kick", "guild_id": gid, "reason": "&lt;b&gt;off-topic&lt;/b&gt;"}
    for sock in (a, c):
        removed = (await sock.wait_for("member:removed"))[0]
        assert removed == {"guild_id": gid, "user_id": bob.user_id, "action": "kick"}
    # both gateway nodes confirmed before the ack
    assert await moderation_metric(http, cluster, "chat_moderation_control_acks_total") - acks_before >= 2

    # the target's sockets no longer receive the guild's channels
    sent = await a.call("message:send", {"channel_id": ch, "content": "after the kick", "nonce": uid("n")})
    assert sent["ok"], sent
    await c.wait_for("message:created")
    for sock in (b1, b2):
        await never_receives(sock, "message:created", lambda e: e["message"]["id"] == sent["message"]["id"])
        assert not sock.events["member:removed"]
    assert error_code(await b1.call("message:send", {"channel_id": ch, "content": "hi", "nonce": uid("n")})) \
        == "not_found"
    synced = await b2.call("sync", {"channels": {ch: 0}})
    assert synced["ok"] and synced["channels"][ch]["error"]["code"] == "not_found", synced
    assert not synced["channels"][ch]["events"]
    await bob.api("GET", f"/guilds/{gid}", expect=404)

    rows = await db_fetch(cluster, "SELECT actor_id, target_id, reason FROM audit_log "
                          "WHERE guild_id = $1 AND action = 'kick'", int(gid))
    assert [dict(r) for r in rows] == [{"actor_id": alice.user_id, "target_id": bob.user_id,
                                        "reason": "&lt;b&gt;off-topic&lt;/b&gt;"}]

    # a kick is not a ban: the user may come back through an invite
    invite = await alice.api("POST", f"/guilds/{gid}/invites", expect=201)
    await bob.api("POST", f"/invites/{invite['code']}", expect=200)
    await asyncio.sleep(0.3)  # the rooms are re-joined through a bus broadcast
    again = await a.call("message:send", {"channel_id": ch, "content": "welcome back", "nonce": uid("n")})
    got = await b2.wait_for("message:created")
    assert got[-1]["message"]["id"] == again["message"]["id"]
    # kicking someone who is no longer a member is not_found
    await a.call("mod:kick", {"guild_id": gid, "user_id": bob.user_id})
    assert error_code(await a.call("mod:kick", {"guild_id": gid, "user_id": bob.user_id})) == "not_found"
    for cl in (alice, bob, carol):
        await cl.close()


async def test_ban_keeps_the_user_out_until_unbanned(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g1, uid("bob")).login()
    carol = await ChatClient(http, g2, uid("carol")).login()
    guild = await guild_with_members(alice, bob, carol)
    gid, ch = guild["id"], guild["text_channel"]
    await set_role(alice, gid, carol, "moderator")
    a = await alice.connect()
    b = await bob.connect()
    c = await carol.connect()

    ack = await c.call("mod:ban", {"guild_id": gid, "user_id": bob.user_id, "reason": "raid"})
    assert ack == {"ok": True}
    event = (await b.wait_for("moderation"))[0]
    assert event == {"action": "ban", "guild_id": gid, "reason": "raid", "until": None}
    for sock in (a, c):
        removed = (await sock.wait_for("member:removed"))[0]
        assert removed == {"guild_id": gid, "user_id": bob.user_id, "action": "ban"}

    sent = await a.call("message:send", {"channel_id": ch, "content": "bob is gone", "nonce": uid("n")})
    await c.wait_for("message:created")
    await never_receives(b, "message:created", lambda e: e["message"]["id"] == sent["message"]["id"])
    assert error_code(await b.call("message:send", {"channel_id": ch, "content": "x", "nonce": uid("n")})) \
        == "not_found"

    invite = await alice.api("POST", f"/guilds/{gid}/invites", expect=201)
    body = await bob.api("POST", f"/invites/{invite['code']}", expect=403)
    assert body["error"]["code"] == "forbidden"
    rows = await db_fetch(cluster, "SELECT reason, until, created_by FROM bans WHERE guild_id = $1 AND user_id = $2",
                          int(gid), bob.user_id)
    assert [dict(r) for r in rows] == [{"reason": "raid", "until": None, "created_by": carol.user_id}]

    # a ban again (now timed) replaces the first one
    assert await c.call("mod:ban", {"guild_id": gid, "user_id": bob.user_id, "duration_s": 3600}) == {"ok": True}
    until = (await db_fetch(cluster, "SELECT until FROM bans WHERE guild_id = $1 AND user_id = $2",
                            int(gid), bob.user_id))[0]["until"]
    assert abs(until - (datetime.now(UTC) + timedelta(seconds=3600))) < timedelta(seconds=30)
    await bob.api("POST", f"/invites/{invite['code']}", expect=403)

    assert await c.call("mod:unban", {"guild_id": gid, "user_id": bob.user_id}) == {"ok": True}
    assert error_code(await c.call("mod:unban", {"guild_id": gid, "user_id": bob.user_id})) == "not_found"
    await bob.api("POST", f"/invites/{invite['code']}", expect=200)
    info = await bob.api("GET", f"/guilds/{gid}", expect=200)
    assert {m["user_id"]: m["role"] for m in info["members"]}[bob.user_id] == "member"

    actions = [r["action"] for r in await db_fetch(
        cluster, "SELECT action FROM audit_log WHERE guild_id = $1 AND target_id = $2 ORDER BY id",
        int(gid), bob.user_id)]
    assert actions == ["ban", "ban", "unban"]
    for cl in (alice, bob, carol):
        await cl.close()


async def test_timeout_silences_the_member_in_that_guild(http, cluster: Stack):
    g1, g2 = cluster.gateways
    alice = await ChatClient(http, g1, uid("alice")).login()
    bob = await ChatClient(http, g2, uid("bob")).login()
    guild = await guild_with_members(alice, bob)
    gid, ch = guild["id"], guild["text_channel"]
    a = await alice.connect()
    b = await bob.connect()

    ack = await a.call("mod:timeout", {"guild_id": gid, "user_id": bob.user_id, "duration_s": 600,
                                       "reason": "cool down"})
    assert ack == {"ok": True}
    event = (await b.wait_for("moderation"))[0]
    assert event["action"] == "timeout" and event["guild_id"] == gid and event["reason"] == "cool down"
    until = datetime.fromisoformat(event["until"])
    assert abs(until - (datetime.now(UTC) + timedelta(seconds=600))) < timedelta(seconds=30)

    rows = await db_fetch(cluster, "SELECT until, reason, created_by FROM guild_timeouts "
                          "WHERE guild_id = $1 AND user_id = $2", int(gid), bob.user_id)
    assert len(rows) == 1 and rows[0]["reason"] == "cool down" and rows[0]["created_by"] == alice.user_id
    assert abs(rows[0]["until"] - until) < timedelta(seconds=1)
    audit = await db_fetch(cluster, "SELECT actor_id, reason, details->>'duration_s' AS d FROM audit_log "
                           "WHERE guild_id = $1 AND action = 'timeout' AND target_id = $2", int(gid), bob.user_id)
    assert [dict(r) for r in audit] == [{"actor_id": alice.user_id, "reason": "cool down", "d": "600"}]

    # still a member who reads the guild, but cannot write in it
    sent = await a.call("message:send", {"channel_id": ch, "content": "still here?", "nonce": uid("n")})
    got = await b.wait_for("message:created")
    assert got[-1]["message"]["id"] == sent["message"]["id"]
    assert error_code(await b.call("message:send", {"channel_id": ch, "content": "x", "nonce": uid("n")})) \
        == "forbidden"
    assert not a.events["member:removed"]
    for cl in (alice, bob):
        await cl.close()
