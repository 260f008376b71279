"""The servers the project starts for itself: Postgres's durability settings."""

from __future__ import annotations

from pathlib import Path

from libs.servers.processes import PostgresServer


def settings(server: PostgresServer) -> list[str]:
    server.sock_dir = server.data_dir.parent  # set when the data directory is prepared
    cmd = server.command()
    return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-c"]


def test_postgres_is_durable_unless_asked_to_be_fast(tmp_path: Path) -> None:
    durable = settings(PostgresServer(tmp_path / "durable", port=1))
    assert not any(s.startswith(("fsync=", "full_page_writes=")) for s in durable)  # Postgres's defaults: on
    fast = settings(PostgresServer(tmp_path / "fast", port=1, fast=True))
    assert {"fsync=off", "full_page_writes=off"} <= set(fast)
