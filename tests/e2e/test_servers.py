"""The servers the project starts for itself: how durable their Postgres is, asked of
Postgres itself. The tests' Postgres turns fsync off for speed; the benchmarks' keeps the
durable defaults (decision 24)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from libs.testing.fixtures import Servers, start_servers


async def durability(dsn: str) -> tuple[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SHOW fsync"), await conn.fetchval("SHOW full_page_writes")
    finally:
        await conn.close()


async def test_the_tests_postgres_is_fast_and_the_benchmarks_is_durable(servers: Servers, run_dir: Path):
    assert await durability(servers.postgres.dsn("postgres")) == ("off", "off")
    durable = start_servers(run_dir / "durable", fast_postgres=False)  # as bench/run.py starts them
    try:
        assert await durability(durable.postgres.dsn("postgres")) == ("on", "on")
    finally:
        durable.stop()
