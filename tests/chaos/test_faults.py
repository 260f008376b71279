"""Faults under load, each injected then healed, checked message by message:
lost = 0, unexpected = 0, crashes = 0, and recovery within the backoff bound."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from libs.servers.processes import RedisServer, free_port
from libs.testing.fixtures import Stack
from libs.testing.loadcheck import LoadRun, Member, setup_members
from tests.chaos.conftest import long_mode

FAULT_S = 30 if long_mode() else 10
RATE = float(os.environ.get("CHAT_CHAOS_RATE", "200" if long_mode() else "100"))
# After a long outage a reconnect attempt and a breaker probe may each be one backoff cap
# (30 s, +20 % jitter) away: recovery is bounded by two of them plus a sync round.
RECOVERY_BOUND_S = 90 if long_mode() else 45


LAST_HEALTH: dict[str, object] = {}


async def health_ok(http: aiohttp.ClientSession, stack: Stack) -> bool:
    for gw in stack.cluster.gateways:
        if not gw.alive:
            continue
        try:
            async with http.get(f"http://127.0.0.1:{gw.ops_port}/health/socket", timeout=aiohttp.ClientTimeout(total=2)) as r:
                body = await r.json()
                LAST_HEALTH[gw.name] = body
                if body["status"] != "ok":
                    return False
        except Exception as exc:
            LAST_HEALTH[gw.name] = repr(exc)
            return False
    return True


async def run_fault(stack: Stack, fault: str, inject, heal, record, members_n: int = 8) -> None:
    async with aiohttp.ClientSession() as http:
        prefix = "".join(ch for ch in fault if ch.isalnum())[:8]
        members = await setup_members(http, stack.gateways, members_n, f"{prefix}-")
        run = LoadRun(members, members[: max(2, members_n // 2)], rate_per_s=RATE, retry_for_s=FAULT_S + 45)
        await run.start()
        killed: set[str] = set()

        async def fault_window() -> float:
            await asyncio.sleep(3)
            killed.update(inject() or ())
            await asyncio.sleep(FAULT_S)
            heal()
            return time.monotonic()

        healed_at_task = asyncio.ensure_future(fault_window())
        await run.send_loop(FAULT_S + 8)
        healed_at = await healed_at_task
        while time.monotonic() - healed_at < RECOVERY_BOUND_S and not await health_ok(http, stack):
            await asyncio.sleep(0.25)
        recovery_s = round(time.monotonic() - healed_at, 1)
        await run.settle(30)
        report = run.report()
        await run.close()
    crashes = [p.name for p in stack.cluster.processes if not p.alive and p.name not in killed]
    record(kind="fault", fault=fault, duration_s=FAULT_S, crashes=len(crashes), recovery_s=recovery_s,
           **report.as_dict())
    assert not crashes, crashes
    assert report.lost == 0 and report.unexpected == 0, (report.as_dict(), report.details)
    assert report.acked > RATE * 5, report.as_dict()
    assert recovery_s < RECOVERY_BOUND_S, (recovery_s, LAST_HEALTH)


async def test_redis_kill_9(own_stack, chaos_record):
    stack = own_stack()
    await run_fault(stack, "redis kill -9", lambda: stack.servers.redis.kill(), lambda: stack.servers.redis.start(),
                    chaos_record)


async def test_redis_sigstop(own_stack, chaos_record):
    stack = own_stack()
    await run_fault(stack, "redis SIGSTOP", lambda: stack.servers.redis.pause(), lambda: stack.servers.redis.resume(),
                    chaos_record)


async def test_nats_kill_9(own_stack, chaos_record):
    stack = own_stack()
    await run_fault(stack, "nats kill -9", lambda: stack.servers.nats.kill(), lambda: stack.servers.nats.start(),
                    chaos_record)


async def test_postgres_kill_9(own_stack, chaos_record):
    stack = own_stack()
    await run_fault(stack, "postgres kill -9", lambda: stack.servers.postgres.kill(),
                    lambda: stack.servers.postgres.start(), chaos_record)


async def test_gateway_node_kill_9(own_stack, chaos_record):
    stack = own_stack()
    victim = stack.cluster.gateways[0]

    def inject() -> list[str]:
        victim.kill()
        return [victim.name]

    def heal() -> None:
        victim.start()

    await run_fault(stack, "gateway kill -9", inject, heal, chaos_record)


async def test_messaging_replica_kill_9(own_stack, chaos_record):
    stack = own_stack()
    second = stack.cluster.add_service("messaging")
    second.start().wait_ready()
    victim = next(p for p in stack.cluster.processes if p.module == "messaging")

    def inject() -> list[str]:
        victim.kill()
        return [victim.name]

    def heal() -> None:
        victim.start()

    await run_fault(stack, "messaging replica kill -9", inject, heal, chaos_record)


async def test_burst_reconnect_of_every_client(own_stack, chaos_record):
    stack = own_stack()
    async with aiohttp.ClientSession() as http:
        members = await setup_members(http, stack.gateways, 40, "burst-")
        run = LoadRun(members, members[:4], rate_per_s=RATE)
        await run.start()

        async def burst() -> float:
            await asyncio.sleep(3)
            await asyncio.gather(*(m._reconnect() for m in members))
            return time.monotonic()

        burst_task = asyncio.ensure_future(burst())
        await run.send_loop(10)
        done = await burst_task
        await run.settle(30)
        recovery_s = round(time.monotonic() - done, 1)
        report = run.report()
        await run.close()
    crashes = [p.name for p in stack.cluster.processes if not p.alive]
    chaos_record(kind="fault", fault="burst reconnect (40 clients)", duration_s=0, crashes=len(crashes),
                 recovery_s=recovery_s, **report.as_dict())
    assert not crashes
    assert report.lost == 0 and report.unexpected == 0, (report.as_dict(), report.details)


async def test_checker_catches_loss_in_plain_python_socketio(run_dir: Path, chaos_record):
    """The same checker against the stock stack (no persistence, no sync) reports loss."""
    redis = RedisServer(run_dir / "baseline-redis").start()
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).with_name("plain_server.py")), str(p), redis.url],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            for u in urls:
                while True:
                    try:
                        async with http.get(f"{u}/socket.io/?EIO=4&transport=polling") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
        members = [Member(f"p{i}", "", urls[i % 2:] + urls[:i % 2], "1") for i in range(6)]
        run = LoadRun(members, members[:2], rate_per_s=100)
        await run.start()

        async def fault() -> None:
            await asyncio.sleep(2)
            redis.kill()
            await asyncio.sleep(5)
            redis.start()

        await asyncio.gather(run.send_loop(12), fault())
        await asyncio.sleep(2)
        report = run.report()
        await run.close()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
        redis.stop()
    expected = report.acked * len(members)
    chaos_record(kind="baseline", duration_s=5, acked=report.acked, lost=report.lost,
                 lost_pct=100 * (expected - report.delivered) / max(1, expected))
    assert report.acked > 500
    assert report.lost > 0, "the checker should see the stock stack lose messages"
