"""The cluster's own processes (two gateway nodes, one replica of each service) as
child processes, for ``chatctl up`` and the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from libs.servers.processes import free_port

SERVICES = ("messaging", "presence", "voice_bridge", "moderation")


@dataclass
class ServiceProcess:
    """One service process started with ``python -m services.<module>``."""

    module: str
    env: dict[str, str]
    ops_port: int
    log_path: Path | None = None
    inherit_output: bool = False
    public_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def name(self) -> str:
        return self.env.get("CHAT_NODE_ID", self.module)

    def start(self) -> ServiceProcess:
        out: int | IO[bytes] | None = None if self.inherit_output else subprocess.DEVNULL
        if self.log_path is not None and not self.inherit_output:
            self._log = open(self.log_path, "ab")
            out = self._log
        self.proc = subprocess.Popen([sys.executable, "-m", f"services.{self.module}"], env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ops_port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except Exception:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} (log: {self.log_path})")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout}s (log: {self.log_path})")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 35.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        if self._log:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Cluster:
    """Two gateway nodes and one replica of each service, sharing NATS, Redis, Postgres."""

    nats_url: str
    redis_url: str
    database_url: str
    log_dir: Path
    gateway_ports: tuple[int, ...] = ()
    base_env: dict[str, str] = field(default_factory=dict)
    inherit_output: bool = False
    processes: list[ServiceProcess] = field(default_factory=list)

    def env_for(self, node_id: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env.update({"CHAT_DEV_MODE": "1", "CHAT_JWT_SECRET": "dev-secret-change-me-0123456789abcdef", "PYTHONUNBUFFERED": "1"})
        env.update(self.base_env)  # the caller's CHAT_* choices override the dev defaults
        env.update({
            "CHAT_NATS_URL": self.nats_url, "CHAT_REDIS_URL": self.redis_url,
            "CHAT_DATABASE_URL": self.database_url, "CHAT_NODE_ID": node_id,
        })
        env.update(extra)
        return env

    def add_gateway(self, port: int | None = None, node_id: str | None = None, **extra: str) -> ServiceProcess:
        port = port or free_port()
        ops = port + 1000 if port + 1000 < 65536 and not _taken(port + 1000) else free_port()
        node_id = node_id or f"gateway-{port}"
        proc = ServiceProcess("gateway", self.env_for(node_id, CHAT_PORT=str(port), CHAT_OPS_PORT=str(ops),
                                                      CHAT_HOST="127.0.0.1", **extra),
                              ops_port=ops, public_port=port, log_path=self.log_dir / f"{node_id}.log",
                              inherit_output=self.inherit_output)
        self.processes.append(proc)
        return proc

    def add_service(self, module: str, node_id: str | None = None, ops_port: int | None = None,
                    **extra: str) -> ServiceProcess:
        ops = ops_port or free_port()
        node_id = node_id or f"{module.replace('_', '-')}-{ops}"
        proc = ServiceProcess(module, self.env_for(node_id, CHAT_OPS_PORT=str(ops), **extra), ops_port=ops,
                              log_path=self.log_dir / f"{node_id}.log", inherit_output=self.inherit_output)
        self.processes.append(proc)
        return proc

    def start(self, gateway_ports: tuple[int, ...] = (0, 0), timeout: float = 60.0,
              service_ops_ports: dict[str, int] | None = None) -> Cluster:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for module in SERVICES:
            self.add_service(module, ops_port=(service_ops_ports or {}).get(module)).start()
        for port in gateway_ports:
            self.add_gateway(port or None).start()
        for p in self.processes:
            p.wait_ready(timeout)
        return self

    @property
    def gateways(self) -> list[ServiceProcess]:
        return [p for p in self.processes if p.module == "gateway"]

    def stop(self) -> dict[str, int | None]:
        """Gateways first (their drain and their sockets' cleanup still reach presence and
        messaging), then the services; each group is signalled at once."""
        codes = {}
        gateways = [p for p in reversed(self.processes) if p.module == "gateway"]
        services = [p for p in reversed(self.processes) if p.module != "gateway"]
        for group in (gateways, services):
            for p in group:
                if p.proc is not None and p.proc.poll() is None:
                    p.proc.send_signal(signal.SIGTERM)
            for p in group:
                codes[p.name] = p.terminate()
        return codes


def _taken(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True
