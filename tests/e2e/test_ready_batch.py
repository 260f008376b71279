"""`ready` for a connect burst: the gateway asks messaging for a batch of users at once
(`ready_many`, one statement), and every user still gets exactly their own `ready`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from libs.bus import schemas
from libs.db.database import Database
from libs.errors import Invalid
from libs.testing.client import ChatClient, guild_with_members, uid
from libs.testing.fixtures import Stack
from libs.testing.wire_fuzz import metric_total
from services.messaging.adapters.store import Store
from services.messaging.transport.bus_handlers import MessagingHandlers


@pytest.fixture
async def people(http, cluster: Stack) -> AsyncIterator[tuple[Store, Database, list[schemas.UserRef]]]:
    """Four users (a messaging Store on the cluster's database, and their refs): two guilds
    (one shared by all, one by two of them), a DM between two, a mutual friendship and a
    one-sided request."""
    g1, g2 = cluster.gateways
    a, b, c, d = [await ChatClient(http, (g1, g2)[i % 2], uid(f"rb{i}-")).login() for i in range(4)]
    everyone = await guild_with_members(a, b, c, d, name="all")
    await guild_with_members(b, c, name="two")
    await a.api("POST", f"/guilds/{everyone['id']}/channels", {"name": "more", "kind": "text"}, expect=201)
    for x, y in ((a, b), (b, a), (c, d)):  # a and b are friends; c only asked d
        await x.api("PUT", f"/users/@me/friends/{y.user_id}")
    sock = await a.connect()
    assert (await sock.call("dm:send", {"recipient_id": c.user_id, "content": "hi", "nonce": "dm1"}))["ok"]
    await a.close()
    db = Database(cluster.cluster.database_url)
    await db.start()
    try:
        assert await db.wait_ready(10)
        yield Store(db), db, [schemas.UserRef(id=u.user_id, name=u.name) for u in (a, b, c, d)]
    finally:
        await db.close()


async def test_ready_many_answers_each_user_as_ready_does(people):
    store, db, refs = people
    new = schemas.UserRef(id=uid("rbnew-"), name="New")  # not in the database yet
    renamed = schemas.UserRef(id=refs[3].id, name="Renamed")
    asked = [refs[2], refs[0], new, refs[1], refs[0], renamed]  # a user twice; d renamed
    many = await store.ready_many(asked)
    assert [r.user for r in many] == asked
    for user, got in zip(asked, many, strict=True):
        want = await store.ready(user)
        assert msgspec.to_builtins(got) == msgspec.to_builtins(want), user
    by_user = {r.user.id: r for r in many}
    assert len(by_user[refs[1].id].guilds) == 2  # b is in both guilds
    assert len(by_user[refs[0].id].guilds) == 1 and len(by_user[refs[0].id].channels) >= 3  # + the DM
    assert by_user[refs[0].id].friend_ids == [refs[1].id]  # mutual only
    assert by_user[refs[2].id].friend_ids == []
    assert by_user[new.id].guilds == [] and by_user[new.id].channels == []
    # both were recorded by ready_many itself (the rename too)
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT name FROM users WHERE id = $1", new.id) == "New"
        assert await conn.fetchval("SELECT name FROM users WHERE id = $1", renamed.id) == "Renamed"
    assert await store.ready_many([]) == []


async def test_a_reply_too_big_for_its_budget_carries_the_first_users(people):
    """Messaging stops a `ready_many` reply before it outgrows its byte budget, always
    carrying one user, and refuses more users than one request may hold."""
    store, _, refs = people
    one = len(schemas.dumps(await store.ready(refs[0])))
    handlers = MessagingHandlers(store, None, None, None, None,  # type: ignore[arg-type]
                                 reply_max_bytes=one + 10)
    part = await handlers.ready_many(schemas.ReadyMany(users=refs))
    assert 1 <= len(part.replies) < len(refs)
    assert [r.user.id for r in part.replies] == [r.id for r in refs[:len(part.replies)]]
    handlers.reply_max_bytes = 1  # never less than one user
    assert len((await handlers.ready_many(schemas.ReadyMany(users=refs))).replies) == 1
    with pytest.raises(Invalid):
        await handlers.ready_many(schemas.ReadyMany(users=refs * 100))


async def test_the_gateway_asks_again_until_every_user_of_a_batch_is_answered(http, own_stack):
    """With a reply budget that fits one user, every `ready_many` answer is cut short: the
    gateway asks again for the rest, and each client of a connect burst still gets its own
    `ready`."""
    stack = own_stack(CHAT_REPLY_MAX_BYTES="1")
    everyone = await _connect_burst(http, stack, "rp", members=8, loners=16)
    (messaging,) = [p for p in stack.cluster.processes if p.module == "messaging"]
    partial = await metric_total(f"http://127.0.0.1:{messaging.ops_port}", "chat_messaging_replies_partial_total",
                                 op="ready_many")
    ops = _ops(stack)
    requests = await metric_total(ops, "chat_bus_request_duration_seconds_count", subject="chat.svc.messaging.ready_many")
    batched = await metric_total(ops, "chat_db_batch_size_count", batch="ready") - \
        await metric_total(ops, "chat_db_batch_size_bucket", batch="ready", le="1.0")
    assert batched >= 1 and partial >= 1  # some connects went together, and their replies in parts
    assert requests > batched  # the gateway asked again
    for u in everyone:
        await u.close()


async def test_a_connect_burst_is_batched_and_each_client_gets_its_own_ready(http, cluster: Stack):
    ops = _ops(cluster)
    users_before = await metric_total(ops, "chat_db_batch_size_sum", batch="ready")
    batches_before = await metric_total(ops, "chat_db_batch_size_count", batch="ready")
    everyone = await _connect_burst(http, cluster, "rb", members=10, loners=30)
    users = await metric_total(ops, "chat_db_batch_size_sum", batch="ready") - users_before
    batches = await metric_total(ops, "chat_db_batch_size_count", batch="ready") - batches_before
    assert users == len(everyone) - 1  # all but the guild's owner, who never connected
    assert batches < users  # some connects shared a request
    for u in everyone:
        await u.close()


def _ops(stack: Stack) -> str:
    """The ops URL of the gateway process behind ``stack.gateways[0]``."""
    (gw,) = [p for p in stack.cluster.gateways if stack.gateways[0].endswith(f":{p.public_port}")]
    return f"http://127.0.0.1:{gw.ops_port}"


async def _connect_burst(http, stack: Stack, prefix: str, *, members: int, loners: int) -> list[ChatClient]:
    """Users of one guild and users of none, all connected at once to the first gateway:
    each gets its own `ready`. Returns them all, the guild's owner (not connected) last."""
    g1 = stack.gateways[0]
    owner = await ChatClient(http, g1, uid(f"{prefix}o-")).login()
    in_guild = [await ChatClient(http, g1, uid(f"{prefix}m{i}-")).login() for i in range(members)]
    alone = [await ChatClient(http, g1, uid(f"{prefix}l{i}-")).login() for i in range(loners)]
    guild = await guild_with_members(owner, *in_guild)
    socks = await asyncio.gather(*(u.connect() for u in in_guild + alone))
    for user, sock in zip(in_guild + alone, socks, strict=True):
        (ready,) = sock.events["ready"]
        assert ready["user"]["id"] == user.user_id
        assert [g["id"] for g in ready["guilds"]] == ([guild["id"]] if user in in_guild else [])
        assert (guild["text_channel"] in [c["id"] for c in ready["channels"]]) == (user in in_guild)
    return in_guild + alone + [owner]


async def test_batches_of_the_same_new_users_at_once_all_succeed(people):
    """Two gateways' batches with the same new users, given in opposite orders, at the same
    moment: both are answered (the rows are locked in one order, so neither deadlocks)."""
    store, db, _ = people
    for round_ in range(5):
        users = [schemas.UserRef(id=uid(f"rbc{round_}-{i}-"), name=f"C{i}") for i in range(40)]
        first, second, third = await asyncio.gather(store.ready_many(users), store.ready_many(users[::-1]),
                                                    store.ready_many(users[::2] + users[1::2]))
        assert [r.user.id for r in first] == [u.id for u in users]
        assert [r.user.id for r in second] == [u.id for u in users[::-1]]
        assert len(third) == len(users)
        async with db.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM users WHERE id = ANY($1::text[])",
                                       [u.id for u in users]) == len(users)
