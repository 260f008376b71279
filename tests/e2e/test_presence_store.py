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


async def test_open_sessions_records_everything_a_session_needs(servers):
    """One script call records, per session: the session (with its TTL), the audience, the
    node's set and the node itself, and returns the user's chosen status as stored."""
    r = aioredis.from_url(servers.redis.url)
    store = PresenceStore(r, key_ttl_s=60)
    p = f"po{time.time_ns()}-"
    node = p + "node"
    try:
        await store.set_chosen(p + "a", "dnd", {"name": "chess / \u00e9checs", "kind": "playing"})
        opened = await store.open_sessions([(p + "a", "s1", node, ["g1", "g2"], [p + "b"]),
                                            (p + "b", "s2", node, [], [])])
        assert opened[0][0] == 0 and opened[1] == (0, {})
        chosen = opened[0][1]
        assert chosen["status"] == "dnd"
        assert chosen["activity"] == {"name": "chess / \u00e9checs", "kind": "playing"}
        assert await store.audience(p + "a") == (["g1", "g2"], [p + "b"])
        assert await store.audience(p + "b") == ([], [])
        assert 0 < await r.ttl(f"pres:s:{p}a") <= 60
        assert 0 < await r.ttl(f"pres:aud:{p}a") <= 60
        assert 60 < await r.ttl(f"pres:st:{p}a") <= 60 * 30
        assert await store.node_sessions(node) == 2
        assert 0 < await r.ttl(f"pres:node:{node}") <= 60
        assert {m.decode() for m in await r.smembers(f"pres:node:{node}")} == {f"{p}a|s1", f"{p}b|s2"}
        first_seen = float(await r.hget("pres:nodes", node))
        assert abs(first_seen - time.time()) < 60
        # a node is watched from its first session on: a later open keeps the first time
        await store.open_sessions([(p + "c", "s3", node, [], [])])
        assert float(await r.hget("pres:nodes", node)) == first_seen
        # a big batch on one node (more members than one SADD takes at once here)
        many = [(f"{p}m{i}", f"s{i}", node, [], []) for i in range(2500)]
        assert [before for before, _ in await store.open_sessions(many)] == [0] * 2500
        assert await store.node_sessions(node) == 2503
    finally:
        await r.hdel("pres:nodes", node)
        await r.aclose()
