"""Wire-level fuzzing of both gateway nodes: random and malformed Engine.IO / Socket.IO
traffic is answered or the connection closed, never kills a process, never produces an
``internal`` error and never leaks a session.

``CHAT_FUZZ_INPUTS`` sets the number of inputs (default 5,000), ``CHAT_FUZZ_SEED`` the
seed (default: a fixed one, so failures reproduce with ``wire_fuzz.make_input``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

import aiohttp

from libs.testing import wire_fuzz
from libs.testing.fixtures import Stack

log = logging.getLogger(__name__)

INPUTS = int(os.environ.get("CHAT_FUZZ_INPUTS", "5000"))
SEED = int(os.environ.get("CHAT_FUZZ_SEED", "20240611"))
CONCURRENCY = int(os.environ.get("CHAT_FUZZ_CONCURRENCY", "20"))
SETTLE_S = 30.0  # polling sessions whose client vanished end at ping interval + timeout (5 s + 5 s here)


async def dev_token(base_url: str, sub: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url}/api/v1/dev/token", json={"sub": sub, "name": sub}) as r:
            assert r.status == 200, await r.text()
            return str((await r.json())["token"])


def ops_urls(cluster: Stack) -> list[str]:
    return [f"http://127.0.0.1:{gw.ops_port}" for gw in cluster.cluster.gateways]


async def internal_errors(ops_url: str) -> float:
    rejected = await wire_fuzz.metric_total(ops_url, "chat_gateway_events_rejected_total", code="internal")
    refused = await wire_fuzz.metric_total(ops_url, "chat_gateway_connections_failed_total", code="internal")
    return rejected + refused


async def sample_liveness(urls: list[str], stop: asyncio.Event, down: list[str]) -> int:
    """Poll /livez on every node until ``stop``; records the nodes that did not answer 200."""
    samples = 0
    while not stop.is_set():
        results = await asyncio.gather(*(wire_fuzz.check_alive(u, timeout=5.0) for u in urls))
        samples += 1
        down.extend(u for u, alive in zip(urls, results) if not alive)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    return samples


async def settled_connections(url: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = await wire_fuzz.active_connections(url)
    while count != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        count = await wire_fuzz.active_connections(url)
    return count


async def test_wire_fuzz_answers_or_closes_and_never_leaks(cluster: Stack, chaos_record) -> None:
    bases, ops = cluster.gateways, ops_urls(cluster)
    token = await dev_token(bases[0], f"wirefuzz{uuid.uuid4().hex[:6]}")
    start_conns = [await wire_fuzz.active_connections(u) for u in ops]
    start_internal = [await internal_errors(u) for u in ops]

    stop, down = asyncio.Event(), []
    sampler = asyncio.create_task(sample_liveness(ops, stop, down))
    share = max(1, CONCURRENCY // len(bases))
    counts = [INPUTS // len(bases) + (1 if i < INPUTS % len(bases) else 0) for i in range(len(bases))]
    reports = await asyncio.gather(*(wire_fuzz.run_fuzz(b, token, n, SEED + i, share)
                                     for i, (b, n) in enumerate(zip(bases, counts))))
    stop.set()
    samples = await sampler
    report = reports[0]
    for r in reports[1:]:
        report = report.merge(r)
    log.info("wire fuzz: %s; %d liveness samples", report.summary(), samples)
    for line in report.findings[:20]:
        log.info("finding: %s", line)

    crashed = [p.name for p in cluster.cluster.processes if not p.alive]
    chaos_record(kind="fuzz", inputs=report.sent, crashes=len(crashed), detail=report.summary())
    assert report.sent == INPUTS
    assert all(p.alive for p in cluster.cluster.processes), [p.name for p in cluster.cluster.processes
                                                              if not p.alive]
    assert samples >= 2 and not down, f"/livez failed during the run on {sorted(set(down))}"
    assert [await internal_errors(u) for u in ops] == start_internal, "internal errors during fuzzing"
    end_conns = [await settled_connections(u, c, SETTLE_S) for u, c in zip(ops, start_conns)]
    assert end_conns == start_conns, f"leaked sessions: {start_conns} -> {end_conns}"
    assert report.ok, f"{report.summary()}\n" + "\n".join(report.failures[:25])
    assert report.sent == sum(1 for _ in range(report.sent))  # every input was judged
    assert report.answered + report.closed + report.still_usable >= report.sent


async def test_livez_and_a_normal_session_after_fuzzing(cluster: Stack) -> None:
    for url in ops_urls(cluster):
        assert await wire_fuzz.check_alive(url)
    token = await dev_token(cluster.gateways[1], f"afterfuzz{uuid.uuid4().hex[:6]}")
    async with aiohttp.ClientSession() as http:
        fi = wire_fuzz.FuzzInput(0, "valid", "ws", True, (f"421{wire_fuzz.PROBE_EVENT}",), "answer", ack_ids=(1,))
        out = await wire_fuzz.replay(http, cluster.gateways[1], token, fi)
    assert out.answered and out.usable and not out.errors, out
