"""How every process starts and stops.

``run(service, settings_cls, build)`` parses ``--check-config``, reads settings once,
sets up logging and tracing, and runs ``build(ctx, stack)`` inside an AsyncExitStack of
context managers (bus, db, redis, servers). On SIGTERM/SIGINT it marks itself not ready,
runs the drain hooks, unwinds the stack and exits within the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from libs.bus.client import Bus
from libs.config.common import CommonSettings, parse_thresholds
from libs.config.settings import ConfigError, check_config, load, settings_warnings
from libs.observability import gc_tuning, loop_lag, metrics
from libs.observability.logging import setup_logging
from libs.observability.tracing import setup_tracing, shutdown_tracing
from libs.ops.server import OpsServer, Readiness
from libs.resilience.backoff import Backoff
from libs.resilience.breaker import CircuitBreaker
from libs.resilience.tasks import background

log = logging.getLogger(__name__)
S = TypeVar("S", bound=CommonSettings)
DrainHook = Callable[[], Awaitable[None]]


STOP_STEP_S = 5.0


class BoundedExitStack(AsyncExitStack):
    """An AsyncExitStack whose async callbacks each get at most ``STOP_STEP_S`` seconds on
    the way out: a stop step that hangs is logged by name and skipped, so the process
    still exits within its grace period."""

    def push_async_callback(self, callback: Callable[..., Awaitable[Any]], /, *args: Any, **kwds: Any) -> Any:
        name = getattr(callback, "__qualname__", repr(callback))

        async def bounded() -> None:
            started = asyncio.get_running_loop().time()
            # asyncio.wait, not wait_for: a step that ignores cancellation is left behind too
            task = asyncio.ensure_future(callback(*args, **kwds))
            done, _ = await asyncio.wait({task}, timeout=STOP_STEP_S)
            if not done:
                task.cancel()
                log.warning("stopping: %s did not finish within %.0f s; moving on", name, STOP_STEP_S)
            elif not task.cancelled() and task.exception() is not None:
                log.error("stopping: %s failed", name, exc_info=task.exception())
            took = asyncio.get_running_loop().time() - started
            if took > 1.0:
                log.info("stopping: %s took %.1f s", name, took)

        return super().push_async_callback(bounded)


@dataclass
class ProcessContext:
    service: str
    node_id: str
    settings: Any
    readiness: Readiness
    ops: OpsServer
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    drain_hooks: list[DrainHook] = field(default_factory=list)
    bus: Bus | None = None

    def backoff(self) -> Backoff:
        s = self.settings
        return Backoff(initial=s.backoff_initial_s, maximum=s.backoff_max_s,
                       factor=s.backoff_factor, down_after=s.backoff_down_after)

    def breaker(self, name: str) -> CircuitBreaker:
        """The process's one breaker for dependency ``name`` (created on first use)."""
        from libs.resilience.breaker import REGISTRY

        if name in REGISTRY:
            return REGISTRY[name]
        s = self.settings
        return CircuitBreaker(name, failures=s.breaker_failures, open_s=s.breaker_open_s,
                              half_open_probes=s.breaker_half_open_probes,
                              close_after=s.breaker_close_after)

    def start_emitter(self, stack: AsyncExitStack) -> Any:
        """The process's write-only Socket.IO adapter (emits to rooms, holds no sockets)."""
        from libs.sio.redis_manager import ResilientRedisManager

        s = self.settings
        emitter = ResilientRedisManager(s.redis_url, s.sio_channel, write_only=True,
                                        backoff=self.backoff(), breaker=self.breaker("redis"))
        emitter.start()
        stack.push_async_callback(emitter.stop)
        return emitter

    async def start_database(self, stack: AsyncExitStack, *, migrate: bool = True) -> Any:
        """The Postgres pool from the ``db_*`` settings, built in the background; ready only
        with a pool. ``migrate``: apply pending migrations (under an advisory lock)."""
        from libs.db.database import Database

        s = self.settings
        db = Database(s.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max,
                      acquire_timeout=s.db_acquire_timeout_s, statement_timeout_ms=s.db_statement_timeout_ms,
                      backoff=self.backoff(), breaker=self.breaker("postgres"), migrate=migrate)
        await db.start()
        stack.push_async_callback(db.close)
        self.readiness.add_check("postgres", lambda: db.pool is not None)
        return db

    async def start_bus(self, stack: AsyncExitStack) -> Bus:
        bus = Bus(self.settings.nats_url, name=self.node_id,
                  request_timeout=self.settings.bus_request_timeout_s,
                  backoff=self.backoff(), breaker=self.breaker("nats"))
        await bus.start()
        stack.push_async_callback(bus.close)
        self.bus = bus
        self.readiness.add_check("nats", lambda: bus.connected)
        return bus


def default_node_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}".replace(".", "-")


def run(service: str, settings_cls: type[S],
        build: Callable[[ProcessContext, AsyncExitStack], Awaitable[None]],
        argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ)
    if "--check-config" in argv:
        ok, text = check_config(settings_cls, env)
        print(text)
        return 0 if ok else 2
    try:
        settings = load(settings_cls, env)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"config error: {p}", file=sys.stderr)
        return 2
    node_id = settings.node_id or default_node_id(service)
    setup_logging(service, node_id, settings.log_format, settings.log_level)
    for warning in settings_warnings(settings):
        log.warning("config: %s", warning)
    setup_tracing(service, node_id, settings.otlp_endpoint, sample_ratio=settings.trace_sample_ratio)
    gc_tuning.configure(parse_thresholds(settings.gc_thresholds))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        asyncio.run(_main(service, node_id, settings, build))
    finally:
        shutdown_tracing()
    return 0


async def _main(service: str, node_id: str, settings: Any,
                build: Callable[[ProcessContext, AsyncExitStack], Awaitable[None]]) -> None:
    readiness = Readiness()
    ops_port = getattr(settings, "effective_ops_port", settings.ops_port)
    ops = OpsServer(settings.ops_host, ops_port, readiness, service, node_id)
    ctx = ProcessContext(service=service, node_id=node_id, settings=settings,
                         readiness=readiness, ops=ops)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctx.stop.set)
    loop.set_exception_handler(_loop_exception_handler)
    async with BoundedExitStack() as stack:
        background(stack, loop_lag.watch(), "loop-lag")
        await build(ctx, stack)  # connects in the background; never blocks on a dependency
        await ops.start()
        stack.push_async_callback(ops.stop)
        gc_tuning.freeze_startup()
        readiness.started = True
        log.info("%s ready", service, extra={"node": node_id})
        await ctx.stop.wait()
        log.info("%s: stop requested, draining (grace %.0fs)", service, settings.drain_grace_s)
        readiness.draining = True
        try:
            await asyncio.wait_for(_drain(ctx), max(1.0, settings.drain_grace_s - 2))
        except TimeoutError:
            log.warning("%s: drain did not finish within the grace period", service)
    log.info("%s stopped", service)


async def _drain(ctx: ProcessContext) -> None:
    for hook in ctx.drain_hooks:
        try:
            await hook()
        except Exception:
            log.exception("drain hook failed")


def _loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    metrics.LOOP_ERRORS.inc()
    what = context.get("task") or context.get("future") or context.get("handle")
    log.error("unhandled error in the event loop: %s%s", context.get("message"),
              f" ({what!r:.300})" if what is not None else "",
              exc_info=exc if isinstance(exc, BaseException) else None)
