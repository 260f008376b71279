"""`sync` for a reconnect storm: the gateway asks messaging for a batch of calls at once
(`sync_many`, one statement), every client still gets exactly its own answer, and no
answer outgrows the bus's payload limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import msgspec
import pytest

from libs.bus import schemas
from libs.db.database import Database
from libs.errors import Invalid
from libs.testing.client import ChatClient, guild_with_members, uid
from libs.testing.fixtures import Stack
from libs.testing.wire_fuzz import metric_total
from services.messaging.adapters.store import SYNC_MANY_SQL, SYNC_SQL, Store, SyncAnswer
from services.messaging.transport.bus_handlers import SYNC_MANY_MAX, MessagingHandlers


@dataclass
class World:
    store: Store
    alice: schemas.UserRef
    bob: schemas.UserRef
    ch1: str  # alice's guild: 5 messages
    ch2: str  # alice's guild: 3 messages
    dm: str  # alice and bob: 2 messages
    other: str  # bob's guild, not alice's: 1 message
    dsn: str


@pytest.fixture
async def world(http, cluster: Stack) -> AsyncIterator[World]:
    g = cluster.gateways[0]
    alice = await ChatClient(http, g, uid("sba-")).login()
    bob = await ChatClient(http, g, uid("sbb-")).login()
    guild = await guild_with_members(alice)
    other = await guild_with_members(bob)
    ch1 = guild["text_channel"]
    ch2 = (await alice.api("POST", f"/guilds/{guild['id']}/channels", {"name": "two", "kind": "text"}, expect=201))["id"]
    for x, y in ((alice, bob), (bob, alice)):  # friends, so they may DM
        await x.api("PUT", f"/users/@me/friends/{y.user_id}")
    a, b = await alice.connect(), await bob.connect()
    for ch, n, who in ((ch1, 5, a), (ch2, 3, a), (other["text_channel"], 1, b)):
        for i in range(n):
            assert (await who.call("message:send", {"channel_id": ch, "content": f"m{i}", "nonce": f"{ch}-{i}"}))["ok"]
    dm = ""
    for i in range(2):
        ack = await a.call("dm:send", {"recipient_id": bob.user_id, "content": f"dm{i}", "nonce": f"dm{i}"})
        assert ack["ok"], ack
        dm = ack["channel_id"]
    await alice.close()
    await bob.close()
    db = Database(cluster.cluster.database_url)
    await db.start()
    try:
        assert await db.wait_ready(10)
        yield World(Store(db), schemas.UserRef(id=alice.user_id, name=alice.name),
                    schemas.UserRef(id=bob.user_id, name=bob.name), ch1, ch2, dm, other["text_channel"],
                    cluster.cluster.database_url)
    finally:
        await db.close()


async def _statements(w: World, run: Callable[[Store], Awaitable[object]]) -> list[str]:
    """The sync statements Postgres was asked to run while ``run`` ran on a Store of one
    pooled connection ("many" or "one"), in order."""
    db = Database(w.dsn, min_size=1, max_size=1)
    await db.start()
    seen: list[str] = []
    try:
        assert await db.wait_ready(10)
        async with db.connection() as conn:  # the pool's only connection, for what follows too
            conn.add_query_logger(lambda q: seen.append(q.query))
        await run(Store(db))
    finally:
        await db.close()
    names = {SYNC_MANY_SQL: "many", SYNC_SQL: "one"}
    return [names[q] for q in seen if q in names]


def _wire(answer: SyncAnswer) -> bytes:
    return schemas.dumps(schemas.SyncReply(channels=answer.channels))


def _seqs(answer: SyncAnswer, channel_id: str) -> list[int]:
    return [msgspec.json.decode(e)["seq"] for e in answer.channels[channel_id].events]


async def test_sync_many_answers_each_call_as_sync_does(world: World):
    w = world
    calls = [
        (w.alice, {w.ch1: 0, "abc": 0, w.other: 0, w.ch2: 1, "999999999999": 0, w.dm: 0}),
        (w.bob, {w.dm: 1, w.other: 0, w.ch1: 0}),  # bob may not see ch1
        (w.alice, {w.ch1: 5, w.ch2: 0}),  # nothing missed in ch1
        (w.alice, {"0": 0, "-1": 0, str(2**63): 0}),  # ids no channel can have
        (w.alice, {}),
        (w.alice, {w.ch1: 2}),
    ]
    for page, budget in ((100, 1000), (3, 4), (2, 100), (100, 0), (1, 1)):
        many = await w.store.sync_many(calls, page, budget)
        assert len(many) == len(calls)
        for (user, channels), got in zip(calls, many, strict=True):
            want = await w.store.sync(user, channels, page, budget)
            assert list(got.channels) == list(channels)  # the order asked
            assert _wire(got) == _wire(want), (page, budget, channels)
    got = (await w.store.sync_many(calls, 3, 4))[0]
    assert _seqs(got, w.ch1) == [1, 2, 3] and not got.channels[w.ch1].complete  # a page
    assert _seqs(got, w.ch2) == [2] and not got.channels[w.ch2].complete  # the budget's rest
    for refused in ("abc", w.other, "999999999999"):
        assert got.channels[refused].error is not None and got.channels[refused].error.code == "not_found"
    # one statement for every channel of every call, when none could over-fetch
    assert await _statements(w, lambda store: store.sync_many(calls, 100, 1000)) == ["many"]
    bob_sees = (await w.store.sync_many(calls, 100, 1000))[1]
    assert _seqs(bob_sees, w.dm) == [2] and bob_sees.channels[w.dm].complete
    assert bob_sees.channels[w.ch1].error is not None
    assert await w.store.sync_many([], 100, 1000) == []


async def test_a_call_with_more_channels_than_its_budget_could_fill_goes_alone(world: World):
    """With page 3 and budget 4, a call of three channels could fetch 9 events for 4 it may
    return: it is answered by itself (as `sync`: one statement per channel, each fetching
    only what the budget leaves), the others of the batch together."""
    w = world
    big = {w.ch1: 0, w.ch2: 0, w.dm: 0}
    small = {w.ch2: 0}
    assert await _statements(w, lambda store: store.sync_many([(w.alice, big), (w.alice, small)], 3, 4)) == \
        ["many", "one", "one", "one"]
    many = await w.store.sync_many([(w.alice, big), (w.alice, small)], 3, 4)
    assert _wire(many[0]) == _wire(await w.store.sync(w.alice, big, 3, 4))
    assert _seqs(many[0], w.ch1) == [1, 2, 3] and _seqs(many[0], w.ch2) == [1] and _seqs(many[0], w.dm) == []
    assert _seqs(many[1], w.ch2) == [1, 2, 3]


async def test_a_sync_answer_stops_at_its_byte_budget_and_calling_again_gets_the_rest(world: World):
    w = world
    one = len((await w.store.sync(w.alice, {w.ch1: 0}, 1, 1)).channels[w.ch1].events[0])
    for sync in (w.store.sync, lambda u, c, *a: _first(w.store.sync_many([(u, c)], *a))):
        got = await sync(w.alice, {w.ch1: 0, w.ch2: 0}, 100, 1000, 2 * one + one // 2)
        assert _seqs(got, w.ch1) == [1, 2] and not got.channels[w.ch1].complete and got.cut
        assert _seqs(got, w.ch2) == [] and not got.channels[w.ch2].complete  # no room left
        got = await sync(w.alice, {w.ch1: 0}, 100, 1000, 1)  # the first event always goes
        assert _seqs(got, w.ch1) == [1] and got.cut
        got = await sync(w.alice, {w.ch2: 0}, 100, 1000, 10 * one)  # room enough: not cut
        assert _seqs(got, w.ch2) == [1, 2, 3] and got.channels[w.ch2].complete and not got.cut
        after, seen = 0, []
        for _ in range(10):  # a client calling again from its last seq gets every event once
            got = await sync(w.alice, {w.ch1: after}, 100, 1000, one)
            seen += _seqs(got, w.ch1)
            after = seen[-1] if seen else after
            if got.channels[w.ch1].complete:
                break
        assert seen == [1, 2, 3, 4, 5]


async def _first(answers) -> SyncAnswer:
    (answer,) = await answers
    return answer


async def test_the_handler_fits_a_sync_many_reply_and_refuses_oversized_requests(world: World):
    w = world
    call = schemas.SyncRequest(user=w.alice, channels={w.ch1: 0})
    handlers = MessagingHandlers(w.store, None, None, None, None)  # type: ignore[arg-type]
    one = len(schemas.dumps(await handlers.sync(call)))
    handlers.reply_max_bytes = one * 2 + one // 2
    part = await handlers.sync_many(schemas.SyncMany(calls=[call] * 5))
    assert len(part.replies) == 2  # the gateway asks again for the other three
    assert all(len(r.channels[w.ch1].events) == 5 for r in part.replies)
    handlers.reply_max_bytes = 1  # one call, with its first event, whatever the budget
    part = await handlers.sync_many(schemas.SyncMany(calls=[call] * 5))
    assert len(part.replies) == 1 and len(part.replies[0].channels[w.ch1].events) == 1
    with pytest.raises(Invalid):
        await handlers.sync_many(schemas.SyncMany(calls=[call] * (SYNC_MANY_MAX + 1)))
    with pytest.raises(Invalid):
        await handlers.sync(schemas.SyncRequest(user=w.alice, channels={str(i): 0 for i in range(1, 502)}))


async def _sync_burst(http, stack: Stack, prefix: str, clients: int) -> None:
    """Members of one guild with 6 messages, each calling `sync` at once from its own seq
    until complete, on both gateways: each gets exactly the events after its seq."""
    owner = await ChatClient(http, stack.gateways[0], uid(f"{prefix}o-")).login()
    members = [await ChatClient(http, stack.gateways[i % 2], uid(f"{prefix}{i}-")).login() for i in range(clients)]
    guild = await guild_with_members(owner, *members)
    ch = guild["text_channel"]
    sock = await owner.connect()
    for i in range(6):
        assert (await sock.call("message:send", {"channel_id": ch, "content": f"s{i}", "nonce": f"s{i}"}))["ok"]
    socks = await asyncio.gather(*(m.connect() for m in members))

    async def catch_up(s, after: int) -> list[int]:
        seqs: list[int] = []
        for _ in range(20):
            ack = await s.call("sync", {"channels": {ch: after}})
            assert ack["ok"], ack
            page = ack["channels"][ch]
            seqs += [e["seq"] for e in page["events"]]
            assert all(e["channel_id"] == ch and e["event"] == "message:created" for e in page["events"])
            after = seqs[-1] if seqs else after
            if page["complete"]:
                return seqs
        raise AssertionError("sync never completed")

    got = await asyncio.gather(*(catch_up(s, i % 7) for i, s in enumerate(socks)))
    for i, seqs in enumerate(got):
        assert seqs == list(range(i % 7 + 1, 7)), i
    for u in members + [owner]:
        await u.close()


async def _batched(stack: Stack) -> tuple[float, float]:
    """(calls, batches) of the gateways' `sync` group commits so far."""
    calls = batches = 0.0
    for gw in stack.cluster.gateways:
        ops = f"http://127.0.0.1:{gw.ops_port}"
        calls += await metric_total(ops, "chat_db_batch_size_sum", batch="sync")
        batches += await metric_total(ops, "chat_db_batch_size_count", batch="sync")
    return calls, batches


async def test_a_sync_burst_is_batched_and_each_client_gets_its_own_events(http, cluster: Stack):
    calls_before, batches_before = await _batched(cluster)
    await _sync_burst(http, cluster, "sb", clients=30)
    calls, batches = await _batched(cluster)
    assert calls - calls_before >= 30
    assert batches - batches_before < calls - calls_before  # some calls shared a request


async def test_the_gateway_asks_again_until_every_call_of_a_batch_is_answered(http, own_stack):
    """With a reply budget of one byte, every `sync_many` answer carries one call and every
    call's answer one event: the gateway asks again for the rest of a batch, the clients
    call again until complete, and each still gets exactly its own events."""
    stack = own_stack(CHAT_REPLY_MAX_BYTES="1")
    await _sync_burst(http, stack, "sp", clients=24)
    (messaging,) = [p for p in stack.cluster.processes if p.module == "messaging"]
    ops = f"http://127.0.0.1:{messaging.ops_port}"
    assert await metric_total(ops, "chat_messaging_replies_partial_total", op="sync_many") >= 1
    assert await metric_total(ops, "chat_messaging_replies_partial_total", op="sync") >= 1
    calls, batches = await _batched(stack)
    assert batches < calls


async def test_a_sync_too_big_for_one_bus_message_comes_in_parts(http, cluster: Stack):
    """Six channels of 100 messages of 2,000 characters: one `sync` of all of them would be
    about 1.4 MB, past the 1 MB NATS carries. The answer stops before 512 KiB with
    `complete: false`, and calling again from the last seqs brings every event once."""
    owner = await ChatClient(http, cluster.gateways[0], uid("sbig-")).login()
    guild = await guild_with_members(owner)
    channels = [guild["text_channel"]] + [
        (await owner.api("POST", f"/guilds/{guild['id']}/channels", {"name": f"c{i}", "kind": "text"},
                         expect=201))["id"] for i in range(5)]
    sock = await owner.connect()
    text = "x" * 2000
    for ch in channels:
        acks = await asyncio.gather(*(sock.call("message:send", {"channel_id": ch, "content": text, "nonce": f"{ch}-{i}"})
                                      for i in range(100)))
        assert all(a["ok"] for a in acks)
    after = dict.fromkeys(channels, 0)
    seen: dict[str, list[int]] = {ch: [] for ch in channels}
    calls = 0
    while True:
        calls += 1
        ack = await sock.call("sync", {"channels": after})
        assert ack["ok"], ack
        assert len(msgspec.json.encode(ack)) < 600 * 1024
        for ch, page in ack["channels"].items():
            seen[ch] += [e["seq"] for e in page["events"]]
            after[ch] = seen[ch][-1] if seen[ch] else 0
        if all(page["complete"] for page in ack["channels"].values()):
            break
        assert calls < 10
    assert calls >= 3  # about 1.4 MB in parts of at most 512 KiB
    assert all(seqs == list(range(1, 101)) for seqs in seen.values())
    await owner.close()
