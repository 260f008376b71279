"""The presence store's batches against a real Redis: the same results as one session
at a time."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from services.presence.adapters.presence_store import PresenceStore


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
        assert await store.open_sessions([(p + "a", "s1", "n1", ["g1"], [])]) == [(1, {})]
        assert await store.session_count(p + "a") == 2
        assert await store.node_sessions("n1") >= 2
        await store.typing_start(p + "b", "c9", 30)
        assert await store.typing_channels_of([p + "a", p + "b"]) == {p + "a": [], p + "b": ["c9"]}
        assert await store.typing_stop_many([(p + "b", "c9"), (p + "b", "c9")]) == [True, False]  # one wins
        assert await store.typing_channels_of([p + "b"]) == {p + "b": []}
        assert await store.close_sessions([(p + "a", "s1", "n1"), (p + "b", "s2", "n1"), (p + "a", "nope", "n1"),
                                           (p + "a", "s3", "n2")]) == [1, 0, -1, 0]
        await store.offline_later([p + "a", p + "b"], time.time() - 1)
        assert set(await store.offline_due(time.time())) >= {p + "a", p + "b"}
        assert await store.open_sessions([]) == [] and await store.close_sessions([]) == []
        # back within the grace: no longer due to be announced offline
        await store.offline_later([p + "c"], time.time() - 1)
        await store.open_sessions([(p + "c", "s9", "n1", [], [])])
        assert p + "c" not in await store.offline_due(time.time())
        # what was shown, recorded for several users at once
        await store.set_shown_many([(p + "a", "online|null", "t1"), (p + "b", "idle|null", "t2")])
        assert (await store.chosen(p + "a"))["shown"] == "online|null"
        assert (await store.chosen(p + "b"))["since"] == "t2"
    finally:
        await r.aclose()
