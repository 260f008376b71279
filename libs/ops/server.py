"""The ops HTTP server every process runs on its own port: /livez, /readyz, /metrics,
plus routes a service adds (the gateway's health and admin endpoints).

Health reports, never raises: each readiness check has its own timeout and a failing
check is reported, not propagated. /livez depends on nothing but the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from libs.observability import metrics

TASKS = Gauge("chat_process_asyncio_tasks", "asyncio tasks alive in this process")

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[bool] | bool]


class Readiness:
    """Ready when started, not draining, and every registered check passes."""

    def __init__(self) -> None:
        self.started = False
        self.draining = False
        self.checks: dict[str, Check] = {}

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    async def evaluate(self, timeout: float = 1.0) -> tuple[bool, dict[str, Any]]:
        detail: dict[str, Any] = {"started": self.started, "draining": self.draining}
        ok = self.started and not self.draining
        for name, check in self.checks.items():
            try:
                res = check()
                if asyncio.iscoroutine(res):
                    res = await asyncio.wait_for(res, timeout)
                passed = bool(res)
            except Exception as exc:  # a check that fails is reported, never raised
                log.debug("readiness check %s failed: %s", name, exc)
                passed = False
            detail[name] = passed
            ok = ok and passed
        metrics.READY.set(1 if ok else 0)
        return ok, detail


def json_response(data: Any, status: int = 200) -> web.Response:
    import orjson

    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _not_tracing() -> web.Response:
    return json_response({"error": "start the process with PYTHONTRACEMALLOC=1 (or more frames)"}, 409)


class OpsServer:
    def __init__(self, host: str, port: int, readiness: Readiness, service: str, node: str) -> None:
        self.host = host
        self.port = port
        self.readiness = readiness
        self.app = web.Application()
        self.service = service
        self.node = node
        self.started_at = time.time()
        self.app.router.add_get("/livez", self._livez)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/debug/tasks", self._tasks)
        self.app.router.add_get("/debug/memory", self._memory)
        self.app.router.add_post("/debug/memory/baseline", self._memory_baseline)
        self._memory_base: Any = None
        self._runner: web.AppRunner | None = None

    def add_get(self, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.app.router.add_get(path, handler)

    def add_post(self, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.app.router.add_post(path, handler)

    async def _livez(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", "service": self.service, "node": self.node,
                              "uptime_s": round(time.time() - self.started_at, 1)})

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, detail = await self.readiness.evaluate()
        return json_response({"ready": ok, "checks": detail}, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        TASKS.set(len(asyncio.all_tasks()))
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _tasks(self, request: web.Request) -> web.Response:
        """asyncio tasks alive, grouped by coroutine: where a leak would show."""
        counts: dict[str, int] = {}
        for task in asyncio.all_tasks():
            coro = task.get_coro()
            name = getattr(coro, "__qualname__", type(coro).__name__)
            counts[name] = counts.get(name, 0) + 1
        return json_response(dict(sorted(counts.items(), key=lambda kv: -kv[1])))

    async def _memory_baseline(self, request: web.Request) -> web.Response:
        import tracemalloc

        if not tracemalloc.is_tracing():
            return _not_tracing()
        self._memory_base = tracemalloc.take_snapshot()
        return json_response({"baseline": True, "traced_bytes": tracemalloc.get_traced_memory()[0]})

    async def _memory(self, request: web.Request) -> web.Response:
        """Python allocations by source line (biggest first), or their growth since the
        last POST /debug/memory/baseline: where the memory of a connection goes. Needs
        tracemalloc (PYTHONTRACEMALLOC=n)."""
        import tracemalloc

        if not tracemalloc.is_tracing():
            return _not_tracing()
        limit = int(request.query.get("limit", "40"))
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        if self._memory_base is not None:
            stats = snap.compare_to(self._memory_base, "lineno")
            top = [{"where": str(st.traceback), "bytes": st.size_diff, "count": st.count_diff} for st in stats[:limit]]
            total = sum(st.size_diff for st in stats)
        else:
            stats_now = snap.statistics("lineno")
            top = [{"where": str(st.traceback), "bytes": st.size, "count": st.count} for st in stats_now[:limit]]
            total = sum(st.size for st in stats_now)
        return json_response({"since_baseline": self._memory_base is not None, "total_bytes": total, "top": top})

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        log.info("ops server on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
