"""Presence session batching in the gateway: the opens and closes that arrive while
earlier ones are in flight go to presence in one request, split to stay under the bus's
payload limit. (The store's side, against Redis: tests/e2e/test_presence_store.py.)"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from libs.bus import schemas
from libs.bus.subjects import PresenceOps
from services.gateway.adapters.sessions import Session
from services.gateway.transport.presence_events import PresenceFeature


class Presence:
    """Stands in for the bus to presence: holds each request until released."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.release = asyncio.Event()
        self.arrived = asyncio.Condition()

    async def wait_requests(self, n: int) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.requests) >= n), 5)

    async def request(self, service: str, op: str, payload: Any, reply_type: type) -> Any:
        self.requests.append((op, payload))
        async with self.arrived:
            self.arrived.notify_all()
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
    feature._opens.spare_after_s = feature._closes.spare_after_s = 0.5  # well past the checks below
    ready = schemas.ReadyReply(user=schemas.UserRef(id="x", name="x"), guilds=[], channels=[])
    payloads: list[dict[str, Any]] = [{} for _ in range(10)]
    opens = [asyncio.create_task(feature.on_connect(_session(i), ready, payloads[i])) for i in range(10)]
    await presence.wait_requests(1)
    # One batch in flight (one session); the other nine wait for the next one.
    assert [len(p.sessions) for _, p in presence.requests] == [1]
    # It is held: once it has run spare_after_s, the spare slot takes the nine.
    await presence.wait_requests(2)
    assert [len(p.sessions) for _, p in presence.requests] == [1, 9]
    presence.release.set()
    await asyncio.gather(*opens)
    assert len(presence.requests) == 2
    assert all(op == PresenceOps.SESSION_OPEN_MANY for op, _ in presence.requests)
    # Each session got its own answer, in order.
    assert [p["presences"][0]["user_id"] for p in payloads] == [f"friend-of-u{i}" for i in range(10)]

    presence.requests.clear()
    presence.release.clear()
    closes = [asyncio.create_task(feature.on_disconnect(_session(i), True)) for i in range(5)]
    await presence.wait_requests(2)
    presence.release.set()
    await asyncio.gather(*closes)
    assert [len(p.sessions) for _, p in presence.requests] == [1, 4]
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
    assert [len(c) for c in by_ids(sessions[:5], limit=10**6, max_sessions=2)] == [2, 2, 1]

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
