"""Soak: continuous connect/disconnect churn and traffic; RSS, open file descriptors and
asyncio tasks of the long-lived processes must stay flat after warm-up."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import socketio

from libs.testing.client import ChatClient, guild_with_members
from tests.chaos.conftest import long_mode

SOAK_S = float(os.environ.get("CHAT_SOAK_S", "600" if long_mode() else "60"))
INTERVAL_S = 5.0


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def tasks(http: aiohttp.ClientSession, port: int) -> int:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("chat_process_asyncio_tasks "):
                return int(float(line.split()[1]))
    return -1


async def test_soak_is_flat(own_stack, chaos_record):
    stack = own_stack(CHAT_PING_INTERVAL_S="5", CHAT_PING_TIMEOUT_S="5")
    urls = stack.gateways
    watched = [p for p in stack.cluster.processes if p.module in ("gateway", "messaging", "presence")]
    samples: dict[str, list[tuple[float, int, int]]] = {p.name: [] for p in watched}
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        users = [await ChatClient(http, urls[i % 2], f"soak{i}").login() for i in range(24)]
        guild = await guild_with_members(users[0], *users[1:])
        ch = guild["text_channel"]
        senders = [await u.connect(urls[i % 2]) for i, u in enumerate(users[:2])]

        async def churn(user: ChatClient, i: int) -> None:
            n = 0
            while not stop.is_set():
                c = socketio.AsyncClient(reconnection=False)
                try:
                    await c.connect(urls[(i + n) % 2], auth={"token": user.token}, transports=["websocket"],
                                    wait_timeout=10)
                    await c.call("typing:start", {"channel_id": ch}, timeout=10)
                    await asyncio.sleep(0.2)
                finally:
                    await c.disconnect()
                n += 1

        async def traffic() -> None:
            i = 0
            while not stop.is_set():
                await senders[i % 2].call("message:send", {"channel_id": ch, "content": f"s{i}", "nonce": f"s{i}"})
                i += 1
                await asyncio.sleep(0.05)

        async def sample() -> None:
            while not stop.is_set():
                for p in watched:
                    samples[p.name].append((rss_mib(p.proc.pid), fds(p.proc.pid), await tasks(http, p.ops_port)))
                await asyncio.sleep(INTERVAL_S)

        jobs = [asyncio.ensure_future(churn(u, i)) for i, u in enumerate(users[2:])]
        jobs += [asyncio.ensure_future(traffic()), asyncio.ensure_future(sample())]
        await asyncio.sleep(SOAK_S)
        stop.set()
        await asyncio.gather(*jobs, return_exceptions=True)
        for u in users:
            await u.close()

    rows = []
    problems = []
    for p in watched:
        s = samples[p.name]
        warm = s[len(s) // 3:]
        first, last = warm[0], warm[-1]
        # Compare averages of the first and last halves after warm-up (robust to GC saw-teeth).
        half = max(1, len(warm) // 2)

        def mean(idx: int, part: list[tuple[float, int, int]]) -> float:
            return sum(x[idx] for x in part) / len(part)

        rss_a, rss_b = mean(0, warm[:half]), mean(0, warm[-half:])
        fds_a, fds_b = mean(1, warm[:half]), mean(1, warm[-half:])
        tasks_a, tasks_b = mean(2, warm[:half]), mean(2, warm[-half:])
        # Churn makes fds and tasks jitter (sockets and their ping tasks come and go):
        # a trend is a rise of the later half's mean beyond that jitter.
        ok = rss_b <= rss_a * 1.10 + 4 and fds_b <= fds_a + 15 and tasks_b <= tasks_a * 1.25 + 20
        if not ok:
            problems.append((p.name, rss_a, rss_b, first, last))
        rows.append({"name": p.name, "rss_mib": (rss_a, rss_b), "fds": (first[1], last[1]),
                     "tasks": (first[2], last[2]), "verdict": "flat" if ok else "GROWING"})
    chaos_record(kind="soak", duration_s=SOAK_S, interval_s=INTERVAL_S, processes=rows)
    assert all(p.alive for p in stack.cluster.processes)
    assert not problems, problems
