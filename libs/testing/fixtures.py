"""pytest fixtures that start real servers and the real cluster on free ports.

``servers``  — NATS (JetStream), Redis and Postgres for the whole test session.
``cluster``  — two gateway nodes and one replica of each service on those servers.
``own_stack`` — a factory for tests that kill or pause a server: a private NATS /
               Redis / Postgres and cluster that no other test shares.
Everything is stopped at the end, by PID.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from libs.servers.cluster import Cluster
from libs.servers.processes import ManagedServer, NatsServer, PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parents[2]
JWT_SECRET = "test-secret-0123456789abcdef0123456789"
OFFLINE_GRACE_S = 2.0  # presence's offline grace in the test clusters
ALLOWED_ORIGIN = "http://allowed.example"


@dataclass
class Servers:
    nats: NatsServer
    redis: RedisServer
    postgres: PostgresServer
    base: Path
    _dbs: int = 0

    def new_database(self) -> str:
        self._dbs += 1
        return self.postgres.create_database(f"chat_{os.getpid()}_{self._dbs}")

    def stop(self) -> None:
        for s in (self.nats, self.redis, self.postgres):
            s.stop()


@dataclass
class Stack:
    """Servers plus a cluster on them."""

    servers: Servers
    cluster: Cluster
    extra: list[ManagedServer] = field(default_factory=list)

    @property
    def gateways(self) -> list[str]:
        return [f"http://127.0.0.1:{g.public_port}" for g in self.cluster.gateways]


def start_servers(base: Path, *, fast_postgres: bool = True) -> Servers:
    """NATS, Redis and Postgres of their own under ``base``. ``fast_postgres`` (the test
    default) turns off fsync: commits reach the OS, not the disk, before they are
    acknowledged. The benchmarks keep Postgres's durable defaults."""
    base.mkdir(parents=True, exist_ok=True)
    nats = NatsServer(base / "nats").start()
    redis = RedisServer(base / "redis").start()
    pg = PostgresServer(base / "postgres", fast=fast_postgres).start()
    return Servers(nats, redis, pg, base)


def relaxed_rate_limits() -> dict[str, str]:
    """Rate limits out of the way, for tests about something else."""
    from services.gateway.settings import GatewaySettings

    return {f"CHAT_RATE_{rule.upper()}": "100000/minute" for rule in GatewaySettings().rate_rules()}


def start_cluster(servers: Servers, name: str, gateways: int = 2, default_limits: bool = False,
                  test_timings: bool = True, **env: str) -> Cluster:
    """``default_limits``: keep the production rate limits (tests of rate limiting).
    ``test_timings``: short typing expiry and offline grace, so tests need not wait for the
    production ones (benchmarks keep the defaults)."""
    timings = {"CHAT_TYPING_TTL_S": "3", "CHAT_OFFLINE_GRACE_S": str(OFFLINE_GRACE_S)} if test_timings else {}
    base_env = {"CHAT_JWT_SECRET": JWT_SECRET, "CHAT_ADMIN_TOKEN": "test-admin-token", "CHAT_LOG_LEVEL": "INFO",
                **timings, **({} if default_limits else relaxed_rate_limits()), **env}
    cluster = Cluster(servers.nats.url, servers.redis.url, servers.new_database(),
                      servers.base / f"logs-{name}", base_env=base_env)
    try:
        cluster.start(gateway_ports=tuple(0 for _ in range(gateways)))
    except Exception:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def run_dir() -> Iterator[Path]:
    path = ROOT / ".run" / f"test-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    yield path
    if os.environ.get("CHAT_KEEP_TEST_DATA") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def servers(run_dir: Path) -> Iterator[Servers]:
    s = start_servers(run_dir / "shared")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def cluster(servers: Servers) -> Iterator[Stack]:
    c = start_cluster(servers, "shared", CHAT_ALLOWED_ORIGINS=ALLOWED_ORIGIN, CHAT_CONNECT_TIMEOUT_S="2",
                      CHAT_PING_INTERVAL_S="5", CHAT_PING_TIMEOUT_S="5")
    yield Stack(servers, c)
    c.stop()


@pytest.fixture
def own_stack(run_dir: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Stack]]:
    """Factory: a private set of servers and a cluster, for tests that inject faults."""
    made: list[Stack] = []

    def make(gateways: int = 2, default_limits: bool = False, **env: str) -> Stack:
        name = f"{request.node.name[:40]}-{len(made)}".replace("/", "_").replace("[", "_").replace("]", "_")
        srv = start_servers(run_dir / name)
        try:
            c = start_cluster(srv, name, gateways, default_limits, True, **env)
        except Exception:
            srv.stop()
            raise
        stack = Stack(srv, c)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.cluster.stop()
        stack.servers.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session for the test's API calls."""
    async with aiohttp.ClientSession() as session:
        yield session
