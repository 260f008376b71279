"""Presence session batching: the gateway's opens and closes that arrive while earlier
ones are in flight go to presence in one request; presence records a batch in one Redis
transaction with the same results as one session at a time."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import redis.asyncio as aioredis

from libs.bus import schemas
from libs.bus.subjects import PresenceOps
from services.gateway.adapters.sessions import Session
from services.gateway.transport.presence_events import PresenceFeature
from services.presence.adapters.presence_store import PresenceStore


class Presence:
    """Stands in for the bus to presence: holds each request until released."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.release = asyncio.Event()

    async def request(self, service: str, op: str, payload: Any, reply_type: type) -> Any:
        self.requests.append((op, payload))
        await self.release.wait()
        if op == PresenceOps.SESSION_OPEN_MANY:
            return schemas.SessionOpenManyReply(replies=[
                schemas.SessionOpenReply(presences=[schemas.Presence(user_id=f"friend-of-{s.user.id}", status="online")])
                for s in payload.sessions])
        return schemas.Empty()


def _session(i: int) -> Session:
    return Session(sid=f"sid{i}", user_id=f"u{i}", name=f"u{i}", session_id=f"s{i}", ip="127.0.0.1")


async def test_opens_and_closes_that_arrive_while_others_are_in_flight_go_together():
    presence = Presence()
    feature = PresenceFeature(SimpleNamespace(request=presence.request, node_id="gw-1"))  # type: ignore[arg-type]
    ready = schemas.ReadyReply(user=schemas.UserRef(id="x", name="x"), guilds=[], channels=[])
    payloads: list[dict[str, Any]] = [{} for _ in range(10)]
    opens = [asyncio.create_task(feature.on_connect(_session(i), ready, payloads[i])) for i in range(10)]
    await asyncio.sleep(0.05)
    # Two batches in flight (one session each); the other eight wait for the next one.
    assert [len(p.sessions) for _, p in presence.requests] == [1, 1]
    presence.release.set()
    await asyncio.gather(*opens)
    assert [len(p.sessions) for _, p in presence.requests] == [1, 1, 8]
    assert all(op == PresenceOps.SESSION_OPEN_MANY for op, _ in presence.requests)
    # Each session got its own answer, in order.
    assert [p["presences"][0]["user_id"] for p in payloads] == [f"friend-of-u{i}" for i in range(10)]

    presence.requests.clear()
    presence.release.clear()
    closes = [asyncio.create_task(feature.on_disconnect(_session(i), True)) for i in range(5)]
    await asyncio.sleep(0.05)
    presence.release.set()
    await asyncio.gather(*closes)
    assert [len(p.sessions) for _, p in presence.requests] == [1, 1, 3]
    assert [s.session_id for _, p in presence.requests for s in p.sessions] == [f"s{i}" for i in range(5)]


async def test_a_failed_batch_fails_each_session_softly():
    async def down(service: str, op: str, payload: Any, reply_type: type) -> Any:
        from libs.errors import Unavailable
        raise Unavailable("presence unavailable")

    feature = PresenceFeature(SimpleNamespace(request=down, node_id="gw-1"))  # type: ignore[arg-type]
    ready = schemas.ReadyReply(user=schemas.UserRef(id="x", name="x"), guilds=[], channels=[])
    payload: dict[str, Any] = {"presences": []}
    await asyncio.gather(*(feature.on_connect(_session(i), ready, payload) for i in range(3)))
    assert payload == {"presences": []}  # `ready` goes out without presences, the connect goes on
    await feature.on_disconnect(_session(1), True)


async def test_store_batch_matches_one_at_a_time(servers):
    r = aioredis.from_url(servers.redis.url)
    store = PresenceStore(r, key_ttl_s=60)
    p = f"pb{time.time_ns()}-"
    try:
        opened = await store.open_sessions([
            (p + "a", "s1", "n1", ["g1"], []),
            (p + "b", "s2", "n1", [], [p + "a"]),
            (p + "a", "s3", "n2", ["g1"], []),  # a's second session sees the first
        ])
        assert [before for before, _ in opened] == [0, 0, 1]
        # again: the same session is not counted twice (one other session before it)
        assert await store.open_session(p + "a", "s1", "n1", ["g1"], []) == (1, {})
        assert await store.session_count(p + "a") == 2
        assert await store.node_sessions("n1") >= 2
        await store.typing_start(p + "b", "c9", 30)
        assert await store.typing_channels_of([p + "a", p + "b"]) == {p + "a": [], p + "b": ["c9"]}
        assert await store.close_sessions([(p + "a", "s1", "n1"), (p + "b", "s2", "n1"), (p + "a", "nope", "n1"),
                                           (p + "a", "s3", "n2")]) == [1, 0, -1, 0]
        await store.offline_later([p + "a", p + "b"], time.time() - 1)
        assert set(await store.offline_due(time.time())) >= {p + "a", p + "b"}
        assert await store.open_sessions([]) == [] and await store.close_sessions([]) == []
        # back within the grace: no longer due to be announced offline
        await store.offline_later([p + "c"], time.time() - 1)
        await store.open_sessions([(p + "c", "s9", "n1", [], [])])
        assert p + "c" not in await store.offline_due(time.time())
    finally:
        await store.typing_stop(p + "b", "c9")
        await r.aclose()


async def test_a_batch_is_split_to_stay_under_the_bus_payload_limit():
    """256 sessions with 1,000 contacts each would be a 3 MB request (NATS refuses over 1 MB):
    the batch goes as several requests of at most 8,000 ids, answered in order."""
    from libs.bus.schemas import dumps
    from services.gateway.transport.presence_events import IDS_PER_REQUEST, by_ids

    sessions = [schemas.SessionOpen(user=schemas.UserRef(id=f"u{i}", name="n"), session_id=f"s{i}", node="gw-1",
                                    guild_ids=[f"{g}" for g in range(5)],
                                    contact_ids=[f"contact-{i}-{k}" for k in range(1000)]) for i in range(256)]
    chunks = by_ids(sessions)
    assert [s for c in chunks for s in c] == sessions
    assert all(sum(1 + len(s.guild_ids) + len(s.contact_ids) for s in c) <= IDS_PER_REQUEST for c in chunks)
    assert max(len(dumps(schemas.SessionOpenMany(sessions=c))) for c in chunks) < 300_000
    assert by_ids([]) == [] and len(by_ids(sessions[:1], limit=10)) == 1  # too big alone: still sent

    seen: list[int] = []

    async def request(service: str, op: str, payload: Any, reply_type: type) -> Any:
        seen.append(len(payload.sessions))
        return schemas.SessionOpenManyReply(replies=[
            schemas.SessionOpenReply(presences=[schemas.Presence(user_id=s.user.id, status="online")])
            for s in payload.sessions])

    feature = PresenceFeature(SimpleNamespace(request=request, node_id="gw-1"))  # type: ignore[arg-type]
    replies = await feature._open_batch(sessions)
    assert len(seen) == len(chunks) > 1
    assert [r.presences[0].user_id for r in replies] == [f"u{i}" for i in range(256)]
