"""chatctl: the operator's command line.

  chatctl token --sub alice --name Alice   print a dev token (HS256, CHAT_JWT_SECRET)
  chatctl up [--detach]                    run the whole cluster on this machine
  chatctl down                             stop what `up` started
  chatctl check-config SERVICE             what --check-config prints for a service
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from libs.auth.tokens import issue_dev_token
from libs.servers.cluster import SERVICES, Cluster
from libs.servers.processes import ManagedServer, NatsServer, PostgresServer, RedisServer, port_open

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / ".run"
PIDFILE = RUN / "cluster.pid"
DEFAULT_SECRET = "dev-secret-change-me-0123456789abcdef"
SERVICE_OPS_PORTS = {"messaging": 9101, "presence": 9102, "voice_bridge": 9103, "moderation": 9104}


def cmd_token(args: argparse.Namespace) -> int:
    secret = os.environ.get("CHAT_JWT_SECRET", DEFAULT_SECRET)
    print(issue_dev_token(secret, sub=args.sub, name=args.name or args.sub,
                          audience=os.environ.get("CHAT_JWT_AUDIENCE", "chat"),
                          issuer=os.environ.get("CHAT_JWT_ISSUER", "chat-dev"), ttl_s=args.ttl))
    return 0


async def _ensure_database(dsn: str) -> bool:
    """Create the database of ``dsn`` on a server we did not start, if it is missing."""
    import asyncpg

    base, _, name = dsn.rpartition("/")
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
        await conn.close()
        return True
    except asyncpg.InvalidCatalogNameError:
        pass
    except Exception:
        return False
    try:
        conn = await asyncpg.connect(base + "/postgres", timeout=3)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return True
    except Exception:
        return False


def resolve_dependencies(own: list[ManagedServer]) -> tuple[str, str, str]:
    """CHAT_*_URL when set, else the standard local port, else a server of our own."""
    nats = os.environ.get("CHAT_NATS_URL")
    if not nats:
        if port_open(4222):
            nats = "nats://127.0.0.1:4222"
        else:
            srv = NatsServer(RUN / "nats").start()
            own.append(srv)
            nats = srv.url
    redis = os.environ.get("CHAT_REDIS_URL")
    if not redis:
        if port_open(6379):
            redis = "redis://127.0.0.1:6379/0"
        else:
            rsrv = RedisServer(RUN / "redis").start()
            own.append(rsrv)
            redis = rsrv.url
    db = os.environ.get("CHAT_DATABASE_URL")
    if not db:
        candidate = "postgresql://postgres@127.0.0.1:5432/chat"
        if port_open(5432) and asyncio.run(_ensure_database(candidate)):
            db = candidate
        else:
            pg = PostgresServer(RUN / "postgres")
            pg.start()
            own.append(pg)
            db = pg.create_database("chat")
    return nats, redis, db


def cmd_up(args: argparse.Namespace) -> int:
    RUN.mkdir(exist_ok=True)
    if PIDFILE.exists():
        try:
            os.kill(int(PIDFILE.read_text()), 0)
            print(f"the cluster is already running (pid {PIDFILE.read_text().strip()}); `make down` stops it")
            return 1
        except (ProcessLookupError, ValueError):
            PIDFILE.unlink()
    ports = tuple(int(p) for p in args.ports.split(","))
    busy = [p for p in ports if port_open(p)]
    if busy:
        print(f"port(s) {busy} are in use; set CHAT_GATEWAY_PORTS or free them")
        return 1
    if args.detach:
        log = open(RUN / "cluster.log", "ab")
        child = subprocess.Popen([sys.executable, "-m", "libs.cli.chatctl", "up", "--ports", args.ports],
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, cwd=ROOT)
        for _ in range(300):
            if PIDFILE.exists():
                break
            if child.poll() is not None:
                print(f"the cluster failed to start; see {RUN / 'cluster.log'}")
                return 1
            time.sleep(0.2)
        print(f"cluster running in the background (pid {child.pid}); logs: {RUN / 'cluster.log'}; `make down` stops it")
        return 0

    own: list[ManagedServer] = []
    cluster: Cluster | None = None
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        nats, redis, db = resolve_dependencies(own)
        user_env = {k: v for k, v in os.environ.items()
                    if k.startswith("CHAT_") and k not in ("CHAT_NATS_URL", "CHAT_REDIS_URL", "CHAT_DATABASE_URL",
                                                           "CHAT_GATEWAY_PORTS")}
        user_env.setdefault("CHAT_ADMIN_TOKEN", "dev-admin-token")
        cluster = Cluster(nats, redis, db, RUN / "logs", base_env=user_env, inherit_output=True)
        cluster.start(gateway_ports=ports, service_ops_ports=SERVICE_OPS_PORTS)
        PIDFILE.write_text(str(os.getpid()))
        _banner(ports, nats, redis, db, own)
        while not stop["now"]:
            for p in cluster.processes:
                if not p.alive:
                    print(f"!! {p.name} exited with {p.proc.returncode if p.proc else '?'}; restarting it", flush=True)
                    p.start()
            time.sleep(1)
    finally:
        print("stopping the cluster ...", flush=True)
        if cluster is not None:
            cluster.stop()
        for srv in reversed(own):
            srv.stop()
        if PIDFILE.exists() and PIDFILE.read_text().strip() == str(os.getpid()):
            PIDFILE.unlink()
        print("stopped", flush=True)
    return 0


def _banner(ports: tuple[int, ...], nats: str, redis: str, db: str, own: list[ManagedServer]) -> None:
    started = ", ".join(s.name for s in own) or "none (using running servers)"
    lines = [
        "",
        "chat cluster is up",
        *(f"  gateway   http://127.0.0.1:{p}  (Socket.IO /socket.io/, HTTP /api/v1/, ops http://127.0.0.1:{p + 1000})"
          for p in ports),
        *(f"  {m:<13}ops http://127.0.0.1:{SERVICE_OPS_PORTS[m]}" for m in SERVICES),
        f"  NATS {nats}   Redis {redis}   Postgres {db}",
        f"  servers started for this run: {started}",
        "",
        "try it:",
        f"  TOKEN=$(curl -s -XPOST localhost:{ports[0]}/api/v1/dev/token -d '{{\"sub\":\"alice\",\"name\":\"Alice\"}}' | python3 -c 'import sys,json;print(json.load(sys.stdin)[\"token\"])')",
        f"  curl -s -XPOST localhost:{ports[0]}/api/v1/guilds -H \"Authorization: Bearer $TOKEN\" -d '{{\"name\":\"My guild\"}}'",
        f"  curl -s localhost:{ports[0] + 1000}/health/socket",
        "Ctrl-C (or `make down` elsewhere) stops everything this command started.",
        "",
    ]
    print("\n".join(lines), flush=True)


def cmd_down(_args: argparse.Namespace) -> int:
    if not PIDFILE.exists():
        print("no cluster started by `make up` is running")
        return 0
    pid = int(PIDFILE.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        PIDFILE.unlink(missing_ok=True)
        print("the cluster was not running")
        return 0
    for _ in range(600):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("cluster stopped")
            return 0
        time.sleep(0.1)
    print(f"cluster (pid {pid}) is still stopping")
    return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, "-m", f"services.{args.service}", "--check-config"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("token", help="print a dev token")
    t.add_argument("--sub", required=True)
    t.add_argument("--name", default="")
    t.add_argument("--ttl", type=int, default=24 * 3600)
    t.set_defaults(fn=cmd_token)
    u = sub.add_parser("up", help="run the cluster")
    u.add_argument("--detach", action="store_true")
    u.add_argument("--ports", default=os.environ.get("CHAT_GATEWAY_PORTS", "8081,8082"))
    u.set_defaults(fn=cmd_up)
    d = sub.add_parser("down", help="stop the cluster started by up")
    d.set_defaults(fn=cmd_down)
    c = sub.add_parser("check-config", help="validate a service's configuration")
    c.add_argument("service", choices=["gateway", *SERVICES])
    c.set_defaults(fn=cmd_check_config)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
