"""Postgres access for the services that own data: a pool that is (re)built in the
background with backoff, versioned migrations under an advisory lock, and a breaker.

While Postgres is away every call raises :class:`Unavailable`: nothing is acknowledged
that was not committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import asyncpg
from opentelemetry import trace

from libs.errors import ChatError, Unavailable
from libs.observability import metrics, tracing
from libs.resilience.backoff import Backoff
from libs.resilience.breaker import CircuitBreaker

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
MIGRATION_LOCK = 0x63686174  # "chat"

_TRANSIENT = (
    OSError,
    ConnectionError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncio.TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every file in libs/db/migrations, in order."""
    out = []
    for entry in resources.files("libs.db").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    applied = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                   version, name)
            applied.append(name)
            log.info("migration applied: %s", name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def _release_reset(conn: asyncpg.Connection) -> None:
    """What a connection needs on its way back to the pool. The services keep no session
    state (no SET, LISTEN, cursors or session advisory locks outside the migration
    lock, which is released explicitly), so only an open transaction is rolled back;
    asyncpg's default reset costs a round trip on every release."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class Database:
    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10,
                 acquire_timeout: float = 2.0, statement_timeout_ms: int = 5000,
                 backoff: Backoff | None = None, breaker: CircuitBreaker | None = None,
                 migrate: bool = True) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.acquire_timeout = acquire_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self.backoff = backoff or Backoff()
        self.breaker = breaker or CircuitBreaker("postgres")
        self.migrate = migrate
        self.pool: asyncpg.Pool | None = None
        self.state = "connecting"
        self.last_change = time.time()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        metrics.DEPENDENCY_UP.labels("postgres").set(0)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name="db-connect")
        self._prober = self.breaker.start_prober(self._probe, Backoff(
            initial=self.backoff.initial, maximum=self.backoff.maximum, factor=self.backoff.factor))

    async def _probe(self) -> bool:
        """A fresh connection (pooled ones may be dead after a restart); on success the pool's
        old connections are replaced on their next use."""
        if self.pool is None:
            return False
        conn = await asyncpg.connect(self.dsn, timeout=self.acquire_timeout)
        try:
            ok = bool(await conn.fetchval("SELECT 1"))
        finally:
            await conn.close()
        if ok:
            await self.pool.expire_connections()
        return ok

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("postgres: %s -> %s", self.state, state)
            self.state = state
            self.last_change = time.time()
        metrics.DEPENDENCY_UP.labels("postgres").set(1 if state == "up" else 0)

    async def _connect_forever(self) -> None:
        while True:
            try:
                pool = await asyncpg.create_pool(
                    self.dsn, min_size=self.min_size, max_size=self.max_size, timeout=5, reset=_release_reset,
                    command_timeout=self.statement_timeout_ms / 1000 + 1,
                    server_settings={"statement_timeout": str(self.statement_timeout_ms),
                                     "application_name": "chat"},
                )
                if self.migrate:
                    async with pool.acquire() as conn:
                        await apply_migrations(conn)
                self.pool = pool
                self.backoff.reset()
                self._set_state("up")
                self._ready.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self.backoff.next_delay()
                self._set_state("down" if self.backoff.down else "connecting")
                metrics.DEPENDENCY_ERRORS.labels("postgres").inc()
                log.warning("postgres: connect failed (%s: %s); retrying in %.1fs",
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        if getattr(self, "_prober", None) is not None:
            self._prober.cancel()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 5)
            except Exception:
                self.pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection under the breaker; dependency failures -> Unavailable."""
        if self.pool is None:
            raise Unavailable("database unavailable")
        with tracing.span(_tracer, "db.connection"):
            async with self.breaker.guard(counts=_counts_as_failure):
                try:
                    async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                        yield conn
                    if self.state != "up":
                        metrics.DEPENDENCY_RECONNECTS.labels("postgres").inc()
                        self._set_state("up")
                except ChatError:
                    raise
                except _TRANSIENT as exc:
                    metrics.DEPENDENCY_ERRORS.labels("postgres").inc()
                    self._set_state("reconnecting")
                    log.warning("postgres: %s: %s", type(exc).__name__, exc)
                    raise Unavailable("database unavailable") from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.connection() as conn:
            try:
                async with conn.transaction():
                    yield conn
            except _TRANSIENT as exc:
                # A commit that failed in flight: not acknowledged, safe to retry.
                log.warning("postgres: transaction failed: %s", type(exc).__name__)
                raise

    def health(self) -> dict[str, Any]:
        return {"state": self.state, "breaker": self.breaker.state,
                "last_change": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_change))}


def _counts_as_failure(exc: BaseException) -> bool:
    return isinstance(exc, Unavailable) or isinstance(exc, _TRANSIENT)
