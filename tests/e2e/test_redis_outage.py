"""Redis killed for 10 s while two nodes carry traffic in a shared room: nothing
crashes, health goes degraded then ok, readiness is lost only while this node's own
listener is down, and every member ends with every acknowledged message."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from libs.testing.loadcheck import LoadRun, setup_members


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status, await r.json()
    except Exception as exc:
        return 0, {"error": str(exc)}


async def test_redis_kill_loses_nothing_acknowledged(own_stack):
    stack = own_stack()
    gws = stack.cluster.gateways
    async with aiohttp.ClientSession() as http:
        members = await setup_members(http, stack.gateways, 6, "r")
        run = LoadRun(members, members[:2], rate_per_s=60)
        await run.start()
        health: list[str] = []
        ready: list[int] = []

        async def watch() -> None:
            while True:
                _, body = await get_json(http, f"http://127.0.0.1:{gws[1].ops_port}/health/socket")
                health.append(body.get("status", "?"))
                status, _ = await get_json(http, f"http://127.0.0.1:{gws[1].ops_port}/readyz")
                ready.append(status)
                await asyncio.sleep(0.25)

        watcher = asyncio.ensure_future(watch())

        async def fault() -> None:
            await asyncio.sleep(3)
            stack.servers.redis.kill()
            await asyncio.sleep(10)
            stack.servers.redis.start()

        await asyncio.gather(run.send_loop(22), fault())
        recovered_by = time.monotonic() + 40
        while time.monotonic() < recovered_by and health[-1] != "ok":
            await asyncio.sleep(0.5)
        await run.settle(30)
        watcher.cancel()
        report = run.report()
        await run.close()

    assert all(p.alive for p in stack.cluster.processes), "a process died"
    assert report.acked > 500, report.as_dict()
    assert report.lost == 0 and report.unexpected == 0, (report.as_dict(), report.details)
    assert "degraded" in health and health[-1] == "ok", health
    assert 503 in ready and ready[-1] == 200
    assert report.sync_required > 0, "clients that missed live events were never told"
