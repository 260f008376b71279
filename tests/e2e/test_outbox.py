"""Durable events: every committed channel event reaches JetStream exactly once (by
Nats-Msg-Id), including the ones written while NATS was away."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import nats

from libs.bus import subjects
from libs.testing.client import ChatClient, guild_with_members


async def stream_ids(nats_url: str) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(subjects.EVENTS_STREAM)
        sub = await js.pull_subscribe(subjects.EVENTS_WILDCARD, durable=None, stream=subjects.EVENTS_STREAM)
        ids: list[str] = []
        while len(ids) < info.state.messages:
            for m in await sub.fetch(100, timeout=5):
                ids.append(m.headers.get("Nats-Msg-Id"))
                await m.ack()
        return ids
    finally:
        await nc.close()


async def test_outbox_reaches_jetstream_once_even_across_a_nats_outage(own_stack):
    stack = own_stack()
    async with aiohttp.ClientSession() as http:
        alice = await ChatClient(http, stack.gateways[0], "alice").login()
        guild = await guild_with_members(alice)
        a = await alice.connect()
        for i in range(20):
            assert (await a.call("message:send", {"channel_id": guild["text_channel"], "content": "m", "nonce": f"a{i}"}))["ok"]
        ack = await a.call("message:edit", {"channel_id": guild["text_channel"], "message_id": "1", "content": "e"})
        assert ack["ok"]
        await alice.close()
    db = await asyncpg.connect(stack.cluster.database_url)
    try:
        deadline = time.monotonic() + 30
        while await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        expected = [str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM outbox ORDER BY id")]
        # A crash between publish and marking: the rows are published again, JetStream drops them.
        await db.execute("UPDATE outbox SET published_at = NULL WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 5)")
        await asyncio.sleep(3)
        deadline = time.monotonic() + 30
        while await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    finally:
        await db.close()
    ids = await stream_ids(stack.servers.nats.url)
    assert len(expected) == 21
    assert sorted(ids) == sorted(expected)  # every event once: the re-published five were de-duplicated
