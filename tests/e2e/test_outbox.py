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
        await wait_drained(db)
        ids = await stream_ids(stack.servers.nats.url)
        assert len(ids) == len(set(ids)) == 21
        # A crash between publish and delete: the rows are published again, JetStream drops them.
        events = await stream_events(stack.servers.nats.url, 5)
        for event_id, subject, payload in events:
            await db.execute("INSERT INTO outbox (event_id, subject, payload) VALUES ($1::uuid, $2, $3::jsonb)",
                             event_id, subject, payload)
        await wait_drained(db)
        assert await db.fetchval("SELECT count(*) FROM outbox") == 0  # published rows are not kept
    finally:
        await db.close()
    assert sorted(await stream_ids(stack.servers.nats.url)) == sorted(ids)  # the five were de-duplicated


async def wait_drained(db: asyncpg.Connection) -> None:
    deadline = time.monotonic() + 30
    while await db.fetchval("SELECT count(*) FROM outbox") and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def stream_events(nats_url: str, n: int) -> list[tuple[str, str, str]]:
    """(event id, subject, payload) of the stream's first n messages."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        out = []
        for seq in range(1, n + 1):
            m = await js.get_msg(subjects.EVENTS_STREAM, seq)
            out.append((m.headers["Nats-Msg-Id"], m.subject, m.data.decode()))
        return out
    finally:
        await nc.close()
