"""Benchmarks: this project's cluster against two peers, in one harness.

    python bench/run.py [--quick] [--scenarios fanout,chat,storm,connections]
                        [--stacks ours,node,py] [--out docs/benchmarks.md]

Stacks (each with two nodes sharing one Redis):
  ours  — the project's cluster (2 gateways + services on NATS, Redis, Postgres);
  node  — bench/peers/node_server.mjs: Node.js Socket.IO 4 + @socket.io/redis-adapter;
  py    — bench/peers/py_server.py: plain python-socketio + AsyncRedisManager on aiohttp.

Every scenario gets a freshly started stack. The load generator is one Node process
(bench/node/loadgen.mjs, socket.io-client 4) that reports its own CPU; server CPU comes
from /proc/<pid>/stat. Writes the report (Markdown), PNG plots under bench/plots/ and
the raw results under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from libs.servers.processes import RedisServer, free_port
from libs.testing.fixtures import Servers, start_cluster, start_servers

NODE_DIR = BENCH / "node"
RUN_DIR = ROOT / ".run" / "bench"
T0 = time.monotonic()
STACK_LABEL = {"ours": "this project", "node": "Node Socket.IO 4", "py": "plain python-socketio"}


def say(msg: str) -> None:
    el = time.monotonic() - T0
    print(f"[{int(el // 60):02d}:{int(el % 60):02d}] {msg}", flush=True)


# ------------------------------------------------------------------------ sizes
@dataclass
class Sizes:
    fanout_members: int = 1000
    fanout_window: int = 8
    fanout_saturate_s: float = 15
    fanout_rates: list[int] = field(default_factory=lambda: [20000])
    fanout_rate_s: float = 15
    chat_channels: int = 100
    chat_members: int = 10
    chat_rates: list[int] = field(default_factory=lambda: [250, 500, 750, 1000, 1500, 2000, 3000])
    chat_step_s: float = 8
    conn_count: int = 10000
    conn_idle_s: float = 5
    storm_clients: int = 5000
    storm_channels: int = 50
    storm_rate: int = 50
    storm_timeout_s: float = 60


QUICK = Sizes(fanout_saturate_s=5, fanout_rate_s=5, chat_rates=[250, 500, 1000, 1500], chat_step_s=3,
              conn_count=2000, conn_idle_s=2, storm_clients=1000, storm_channels=10, storm_timeout_s=30)


# ------------------------------------------------------------------------ stacks
def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError):
                pass
    out, todo = [pid], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout}s")


class PeerStack:
    kind = "peer"

    def __init__(self, name: str, servers: Servers) -> None:
        self.name = name
        self.servers = servers
        self.redis: RedisServer | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []

    def start(self) -> None:
        self.redis = RedisServer(RUN_DIR / f"redis-peer-{self.name}").start()
        for _ in range(2):
            port = free_port()
            if self.name == "node":
                cmd = ["node", str(BENCH / "peers" / "node_server.mjs"), str(port), self.redis.url]
            else:
                cmd = [sys.executable, str(BENCH / "peers" / "py_server.py"), str(port), self.redis.url]
            log = open(RUN_DIR / f"peer-{self.name}-{port}.log", "ab")
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            self.ports.append(port)
        for port in self.ports:
            wait_http(f"http://127.0.0.1:{port}/readyz")

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def pids(self) -> dict[str, list[int]]:
        assert self.redis is not None and self.redis.proc is not None
        return {"nodes": [p.pid for p in self.procs], "redis": [self.redis.proc.pid]}

    def node_pid(self, i: int) -> int:
        return self.procs[i].pid

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self.redis is not None:
            self.redis.stop()
        self.procs, self.ports = [], []


class OurStack:
    kind = "chat"
    name = "ours"

    def __init__(self, servers: Servers, env: dict[str, str] | None = None) -> None:
        self.servers = servers
        self.env = env or {}
        self.cluster: Any = None
        self.n = 0

    def start(self) -> None:
        self.n += 1
        # the messaging service's Socket.IO emits travel over the same Redis; a fresh
        # channel name per start keeps runs apart
        # production settings, except the rate limits (every client comes from 127.0.0.1)
        self.cluster = start_cluster(self.servers, f"bench-{self.n}", test_timings=False, **self.env)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{g.public_port}" for g in self.cluster.gateways]

    def pids(self) -> dict[str, list[int]]:
        s = self.servers
        services = [p.proc.pid for p in self.cluster.processes if p.module != "gateway"]
        return {"nodes": [g.proc.pid for g in self.cluster.gateways], "services": services,
                "redis": [s.redis.proc.pid], "nats": [s.nats.proc.pid],
                "postgres": descendants(s.postgres.proc.pid)}

    def node_pid(self, i: int) -> int:
        return int(self.cluster.gateways[i].proc.pid)

    def stop(self) -> None:
        if self.cluster is not None:
            self.dump_metrics()
            self.cluster.stop()
            self.cluster = None

    def dump_metrics(self) -> None:
        """Every process's /metrics at the end of a scenario, under .run/bench/ (where the
        time went: bus request and handling durations, event durations, ...)."""
        for p in self.cluster.processes:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{p.ops_port}/metrics", timeout=5) as r:
                    (RUN_DIR / f"metrics-{self.n}-{p.module}-{p.ops_port}.txt").write_bytes(r.read())
            except OSError as exc:
                say(f"  (metrics of {p.module} not read: {exc})")


# ------------------------------------------------------------------------ setup over HTTP (ours)
async def _mint(urls: list[str], n: int, prefix: str) -> list[str]:
    import aiohttp

    sem = asyncio.Semaphore(50)
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> str:
            async with sem, http.post(f"{urls[i % len(urls)]}/api/v1/dev/token",
                                 json={"sub": f"{prefix}{i}", "name": f"{prefix}{i}"}) as r:
                assert r.status == 200, await r.text()
                return str((await r.json())["token"])
        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _guilds(urls: list[str], groups: list[list[str]]) -> list[str]:
    """Each group of tokens becomes one guild (owner = first); returns text channel ids."""
    import aiohttp

    sem = asyncio.Semaphore(40)
    async with aiohttp.ClientSession() as http:
        async def call(token: str, method: str, path: str, json_body: Any = None) -> Any:
            async with sem:
                async with http.request(method, f"{urls[0]}/api/v1{path}", json=json_body,
                                        headers={"Authorization": f"Bearer {token}"}) as r:
                    body = await r.json(content_type=None)
                    assert r.status in (200, 201), (r.status, body)
                    return body

        async def one(group: list[str]) -> str:
            g = await call(group[0], "POST", "/guilds", {"name": "bench"})
            inv = await call(group[0], "POST", f"/guilds/{g['id']}/invites")
            await asyncio.gather(*(call(t, "POST", f"/invites/{inv['code']}") for t in group[1:]))
            return str(next(c["id"] for c in g["channels"] if c["kind"] == "text"))
        return list(await asyncio.gather(*(one(g) for g in groups)))


def mint(stack: Any, n: int, prefix: str) -> list[str] | None:
    if stack.kind != "chat":
        return None
    t = time.monotonic()
    tokens = asyncio.run(_mint(stack.urls, n, prefix))
    say(f"  setup: {n} dev tokens in {time.monotonic() - t:.1f} s")
    return tokens


def rooms(stack: Any, tokens: list[str] | None, groups: int, size: int, prefix: str) -> list[dict[str, Any]]:
    if stack.kind != "chat":
        return [{"room": f"{prefix}-{g}", "tokens": [None] * size} for g in range(groups)]
    assert tokens is not None
    split = [tokens[g * size:(g + 1) * size] for g in range(groups)]
    t = time.monotonic()
    chans = asyncio.run(_guilds(stack.urls, split))
    say(f"  setup: {groups} guilds × {size} members in {time.monotonic() - t:.1f} s")
    return [{"room": c, "tokens": toks} for c, toks in zip(chans, split)]


# ------------------------------------------------------------------------ running the load generator
CLK_TCK = os.sysconf("SC_CLK_TCK")


def loadgen(scenario: str, stack: Any, cfg: dict[str, Any], max_s: int) -> dict[str, Any]:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    cfg_path = RUN_DIR / f"cfg-{scenario}-{stack.name}.json"
    res_path = RUN_DIR / f"res-{scenario}-{stack.name}.json"
    res_path.unlink(missing_ok=True)
    cfg = {"scenario": scenario, "stack": stack.name, "kind": stack.kind, "urls": stack.urls, "pids": stack.pids(),
           "clkTck": CLK_TCK, "resultPath": str(res_path), "runId": f"{scenario}-{int(time.time())}",
           "maxSeconds": max_s, **cfg}
    cfg_path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(["node", "--max-old-space-size=4096", str(NODE_DIR / "loadgen.mjs"), str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        say("  " + line.rstrip())
    try:
        proc.wait(max_s + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if not res_path.exists():
        return {"ok": False, "error": f"load generator exited with {proc.returncode} and no result"}
    return dict(json.loads(res_path.read_text()))


def run_scenario(scenario: str, stack: Any, sz: Sizes) -> dict[str, Any]:
    load = os.getloadavg()[0]
    say(f"== {scenario} on {STACK_LABEL[stack.name]}: starting the stack (load average {load:.1f})")
    r = _run_scenario(scenario, stack, sz)
    r["loadavg_before"] = load
    return r


def _run_scenario(scenario: str, stack: Any, sz: Sizes) -> dict[str, Any]:
    stack.start()
    conc = 20 if stack.kind == "chat" else 100
    try:
        if scenario == "fanout":
            tokens = mint(stack, sz.fanout_members, f"fan{int(time.time())}-")
            room = rooms(stack, tokens, 1, sz.fanout_members, "fanout")[0]
            cfg = {"members": sz.fanout_members, "room": room["room"], "tokens": room["tokens"] if tokens else None,
                   "window": sz.fanout_window, "saturateSeconds": sz.fanout_saturate_s, "rates": sz.fanout_rates,
                   "rateSeconds": sz.fanout_rate_s, "halfSaturation": True, "connectConcurrency": conc}
            return loadgen(scenario, stack, cfg, 300)
        if scenario == "chat":
            n = sz.chat_channels * sz.chat_members
            tokens = mint(stack, n, f"chat{int(time.time())}-")
            chans = rooms(stack, tokens, sz.chat_channels, sz.chat_members, "chat")
            cfg = {"channels": chans, "rates": sz.chat_rates, "stepSeconds": sz.chat_step_s, "p99LimitMs": 50, "connectConcurrency": conc}
            return loadgen(scenario, stack, cfg, 300)
        if scenario == "connections":
            tokens = mint(stack, sz.conn_count, f"idle{int(time.time())}-")
            cfg = {"count": sz.conn_count, "tokens": tokens, "targetPid": stack.node_pid(0), "idleSeconds": sz.conn_idle_s,
                   "connectConcurrency": 50}
            return loadgen(scenario, stack, cfg, 900)
        if scenario == "storm":
            per = sz.storm_clients // sz.storm_channels + 1  # + the channel's sender, not dropped
            tokens = mint(stack, per * sz.storm_channels, f"storm{int(time.time())}-")
            chans = rooms(stack, tokens, sz.storm_channels, per, "storm")
            cfg = {"channels": chans, "rate": sz.storm_rate, "stormTimeoutSeconds": sz.storm_timeout_s, "connectConcurrency": conc}
            return loadgen(scenario, stack, cfg, 900)
        raise ValueError(scenario)
    except Exception as exc:
        say(f"  {scenario} on {stack.name} failed: {exc}")
        return {"ok": False, "error": repr(exc)}
    finally:
        stack.stop()


# ------------------------------------------------------------------------ report
def cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "?"


def speed_check() -> str:
    """How fast this machine is right now, so runs on one machine can be compared: a fixed
    pure-Python loop (best of 5) and the CPU of one 100-byte send on a loopback TCP socket
    (the system call every message pays many times). Shared virtual machines drift."""
    import socket
    import threading
    loop_ms = min(_timed(lambda: sum(range(100_000))) for _ in range(5)) * 1000
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.create_connection(srv.getsockname())
    peer, _ = srv.accept()

    def drain() -> None:
        while peer.recv(1 << 20):
            pass
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    n, msg = 20_000, b"x" * 100
    cpu0 = time.process_time()
    for _ in range(n):
        c.send(msg)
    send_us = (time.process_time() - cpu0) / n * 1e6
    c.close()
    t.join(5)
    peer.close()
    srv.close()
    return f"Python loop {loop_ms:.2f} ms, loopback TCP send {send_us:.1f} µs of CPU"


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine() -> dict[str, str]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    mem_kb = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")))

    def npm_version(pkg: str) -> str:
        try:
            return str(json.loads((NODE_DIR / "node_modules" / pkg / "package.json").read_text())["version"])
        except OSError:
            return "?"

    from importlib.metadata import version
    pg = cmd([str(Path(shutil.which("initdb") or "/usr/lib/postgresql/x/bin/initdb").parent / "postgres"), "--version"])
    if not pg:
        import glob
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        pg = cmd([found[-1], "--version"]) if found else "?"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()), "cpu_model": cpu, "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(), "python": platform.python_version(),
        "python-socketio": version("python-socketio"), "python-engineio": version("python-engineio"),
        "aiohttp": version("aiohttp"), "uvloop": version("uvloop"), "redis-py": version("redis"),
        "node": cmd(["node", "--version"]), "socket.io": npm_version("socket.io"),
        "socket.io-client": npm_version("socket.io-client"),
        "@socket.io/redis-adapter": npm_version("@socket.io/redis-adapter"), "node redis": npm_version("redis"),
        "redis-server": cmd(["redis-server", "--version"]).split(" ")[2].removeprefix("v=") if cmd(["redis-server", "--version"]) else "?",
        "postgres": pg.split()[-1] if pg else "?",
        "nats-server": cmd([str(Path(sys.prefix) / "bin" / "nats-server"), "--version"]).split()[-1] if (Path(sys.prefix) / "bin" / "nats-server").exists() else "?",
    }


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def res(results: dict[str, Any], scenario: str, stack: str) -> dict[str, Any] | None:
    r = results.get(scenario, {}).get(stack)
    return r["result"] if r and r.get("ok") else None


def _connects(k: dict[str, Any]) -> int:
    """Connects made in the measured connect phase (after the warm-up)."""
    return max(1, int(k["count"]) - int(k["warm"]) - int(k["failed"]))


def _first(phase: dict[str, Any]) -> str | None:
    f = phase.get("first_delivery")
    return f"{fmt(f['p50_ms'])} / {fmt(f['p99_ms'])}" if f and f.get("count") else None


def fanout_figures(r: dict[str, Any] | None) -> dict[str, Any]:
    if r is None:
        return {}
    sat = r["phases"][0]
    d = sat["deliveries"] or None  # no deliveries: no per-delivery figure
    out: dict[str, Any] = {
        "sat_dps": sat["deliveries_per_s"], "sat_missing": sat["missing"], "settle_s": r.get("settle_s"),
        "us_nodes": 1e6 * sat["cpu_s"]["nodes"] / d if d else None,
        "us_all": 1e6 * sum(sat["cpu_s"].values()) / d if d else None,
        "sat_loadgen_pct": sat["loadgen_cpu_pct"], "sat_p99": sat["latency"]["p99_ms"], "sat_other": sat.get("other_cores"),
        "cpu_groups": {k: 1e6 * v / d for k, v in sat["cpu_s"].items()} if d else {},
    }
    for ph in r["phases"][1:]:
        key = "half" if ph.get("half_saturation") else str(ph["target_deliveries_per_s"])
        out[f"rate_{key}"] = ph
    return out


def write_report(results: dict[str, Any], info: dict[str, str], sz: Sizes, quick: bool, out: Path,
                 plots: list[str], wall_s: float, stacks: list[str]) -> None:
    L: list[str] = []
    w = L.append
    w("# Benchmarks")
    w("")
    w(f"Measured {info['date']} with `bench/run.py`{' --quick (shorter phases and smaller sizes, see below)' if quick else ''}; "
      + (f"the whole run took {wall_s / 60:.1f} min. " if wall_s else "") + "Figures come from `bench/run.py`; the run writes its raw results to "
      "`bench/results/latest.json` (several MB, not kept in git). Nothing below is estimated: a missing figure is marked “—” and explained.")
    w("")
    w("## Machine and versions")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| CPU | {info['cpu_model']}, {info['cpus']} logical CPUs (`nproc`) |")
    w(f"| RAM | {info['ram']} |")
    w(f"| Kernel | {info['kernel']} |")
    w(f"| Python | {info['python']}; python-socketio {info['python-socketio']}, python-engineio {info['python-engineio']}, "
      f"aiohttp {info['aiohttp']}, uvloop {info['uvloop']}, redis-py {info['redis-py']} |")
    w(f"| Node.js | {info['node']}; socket.io {info['socket.io']}, @socket.io/redis-adapter {info['@socket.io/redis-adapter']}, "
      f"redis {info['node redis']}, socket.io-client {info['socket.io-client']} (load generator) |")
    w(f"| Servers | Redis {info['redis-server']}, PostgreSQL {info['postgres']}, NATS {info['nats-server']} |")
    if info.get("speed_start"):
        w(f"| Speed check (`speed_check()` in bench/run.py) | at the start: {info['speed_start']}; "
          f"at the end: {info.get('speed_end', '—')} |")
    w("")
    w("Everything runs on this one machine over 127.0.0.1: the servers, Redis (and for this project NATS "
      "and Postgres) and the load generator share the same 2 CPUs. Throughput figures are therefore "
      "figures for *the whole thing on 2 CPUs*; server CPU per delivery (from `/proc/<pid>/stat`) is "
      "the comparison that does not depend on who else was on the CPU.")
    w("")
    w("## The stacks")
    w("")
    w("Each runs as two nodes sharing one Redis, started fresh for every scenario.")
    w("")
    w("- **this project** — two gateways (python-socketio + the resilient Redis adapter, uvloop) plus the "
      "messaging, presence, voice-bridge and moderation services, on NATS, Redis and Postgres, with their "
      "default settings except the rate limits, which are relaxed (every client connects from 127.0.0.1). "
      "Messages go through `message:send` → messaging (persisted in Postgres, `seq` assigned) → "
      "`message:created` to the channel's room. Postgres keeps its durable defaults (`fsync` and "
      "full-page writes on): a message is acknowledged once its commit is on disk. (The test suite "
      "turns `fsync` off for speed; the benchmarks do not.)")
    w("- **Node Socket.IO 4** — `bench/peers/node_server.mjs`: `socket.io` + `@socket.io/redis-adapter`; "
      "`send` broadcasts to a room, nothing stored, nothing checked.")
    w("- **plain python-socketio** — `bench/peers/py_server.py`: `AsyncServer` + `AsyncRedisManager` on aiohttp "
      "(uvloop, as the gateway), same events. The ceiling of the framework this project builds on.")
    w("")
    w("What the peers broadcast is a chat message event of the shape and size of this project's "
      "`message:created` (PROTOCOL.md's message object, with an author, nonce and timestamp of similar "
      "lengths), with the room and counter they route by in place of its `channel_id`: every stack delivers "
      "frames of the same size (about 340 bytes) to each member.")
    w("")
    w("Load generator: one Node process with `socket.io-client` (`bench/node/loadgen.mjs`), WebSocket transport. "
      "Sender and receivers are in that process, so send→deliver latency is measured on one clock "
      "(`performance.now()`). Its own CPU (`process.cpuUsage()`) is reported per phase: one process can use "
      "at most 100 % (one core).")
    w("")

    # ---- fanout
    F = {s: fanout_figures(res(results, "fanout", s)) for s in stacks}
    w("## Fanout")
    w("")
    w(f"One room of {sz.fanout_members:,} members spread over the two nodes; one of them sends. "
      f"*Saturation*: closed loop, at most {sz.fanout_window} messages not yet delivered to every member, "
      f"for {fmt(sz.fanout_saturate_s, 0)} s. *Fixed rate*: open loop for {fmt(sz.fanout_rate_s, 0)} s at "
      f"{', '.join(f'{r:,}' for r in sz.fanout_rates)} deliveries/s and at half of the stack's own saturation rate. "
      "For this project each message is a persisted `message:send` (acknowledged after Postgres commit); the "
      "peers store nothing.")
    w("")
    w("| | " + " | ".join(STACK_LABEL[s] for s in stacks) + " |")
    w("|---|" + "---|" * len(stacks))

    def row(label: str, key: Any, digits: int = 1) -> None:
        vals = []
        for s in stacks:
            f = F.get(s) or {}
            v = key(f) if f else None
            vals.append(fmt(v, digits))
        w(f"| {label} | " + " | ".join(vals) + " |")

    row("seconds until the nodes were quiet after the members connected", lambda f: f.get("settle_s"), 1)
    row("deliveries/s at saturation", lambda f: f["sat_dps"], 0)
    row("server CPU per delivery, the two nodes (µs)", lambda f: f["us_nodes"], 1)
    row("server CPU per delivery, all server processes incl. Redis/NATS/Postgres (µs)", lambda f: f["us_all"], 1)
    row("p99 at saturation (ms)", lambda f: f["sat_p99"], 1)
    row("load generator CPU at saturation (% of one core)", lambda f: f["sat_loadgen_pct"], 0)
    row("other load on the machine at saturation (cores)", lambda f: f["sat_other"], 2)
    for r_ in sz.fanout_rates:
        k = f"rate_{r_}"
        row(f"{r_:,}/s: achieved deliveries/s", lambda f, k=k: f.get(k, {}).get("achieved_deliveries_per_s"), 0)
        row(f"{r_:,}/s: p50 (ms)", lambda f, k=k: f.get(k, {}).get("latency", {}).get("p50_ms"), 1)
        row(f"{r_:,}/s: p99 (ms)", lambda f, k=k: f.get(k, {}).get("latency", {}).get("p99_ms"), 1)
        row(f"{r_:,}/s: a message's first delivery, p50 / p99 (ms)", lambda f, k=k: _first(f.get(k, {})), 1)
        row(f"{r_:,}/s: missing deliveries", lambda f, k=k: f.get(k, {}).get("missing"), 0)
        row(f"{r_:,}/s: load generator CPU (%)", lambda f, k=k: f.get(k, {}).get("loadgen_cpu_pct"), 0)
    row("half saturation: rate (deliveries/s)", lambda f: f.get("rate_half", {}).get("target_deliveries_per_s"), 0)
    row("half saturation: p50 (ms)", lambda f: f.get("rate_half", {}).get("latency", {}).get("p50_ms"), 1)
    row("half saturation: p99 (ms)", lambda f: f.get("rate_half", {}).get("latency", {}).get("p99_ms"), 1)
    row("half saturation: missing deliveries", lambda f: f.get("rate_half", {}).get("missing"), 0)
    w("")
    w("*First delivery*: the time until the first of a message's members has it, i.e. the path in front of "
      "the fan-out (for this project: the gateway, NATS, messaging, Postgres and the Redis emit). The rest of "
      "a message's latencies is the spread of its deliveries, mostly the load generator reading "
      f"{sz.fanout_members:,} sockets in one process.")
    w("")
    bound = [STACK_LABEL[s] for s in stacks if (F.get(s) or {}).get("sat_loadgen_pct", 0) >= 80]
    if bound:
        w(f"**Load generator near its limit** at saturation for {', '.join(bound)} (≥ 80 % of its one core): "
          "that saturation figure is a lower bound for the server, not its ceiling. The CPU per delivery "
          "figures are unaffected (they divide the servers' own CPU by the deliveries they made).")
        w("")
    if "ours" in stacks and F.get("ours", {}).get("cpu_groups"):
        g = F["ours"]["cpu_groups"]
        w("This project's CPU per delivery at saturation, by process group (µs): " +
          ", ".join(f"{k} {v:.1f}" for k, v in g.items()) + ". The gateways' share is the delivery path; "
          "the rest (messaging service, NATS, Postgres, Redis) is the cost of persisting and routing each "
          f"message, spread over its {sz.fanout_members:,} deliveries.")
        w("")
    # ratios
    w("Ratios (this project ÷ peer):")
    w("")
    w("| | ÷ Node Socket.IO 4 | ÷ plain python-socketio |")
    w("|---|---|---|")
    o, n, p = F.get("ours") or {}, F.get("node") or {}, F.get("py") or {}
    w(f"| deliveries/s at saturation | {ratio(o.get('sat_dps'), n.get('sat_dps'))} | {ratio(o.get('sat_dps'), p.get('sat_dps'))} |")
    w(f"| server CPU per delivery (two nodes) | {ratio(o.get('us_nodes'), n.get('us_nodes'))} | {ratio(o.get('us_nodes'), p.get('us_nodes'))} |")
    w(f"| server CPU per delivery (all processes) | {ratio(o.get('us_all'), n.get('us_all'))} | {ratio(o.get('us_all'), p.get('us_all'))} |")
    k = f"rate_{sz.fanout_rates[0]}"
    op99 = o.get(k, {}).get("latency", {}).get("p99_ms")
    w(f"| p99 at {sz.fanout_rates[0]:,} deliveries/s | {ratio(op99, n.get(k, {}).get('latency', {}).get('p99_ms'))} | "
      f"{ratio(op99, p.get(k, {}).get('latency', {}).get('p99_ms'))} |")
    w(f"| p99 between the peers: Node ÷ plain python-socketio at {sz.fanout_rates[0]:,}/s | "
      f"{ratio(n.get(k, {}).get('latency', {}).get('p99_ms'), p.get(k, {}).get('latency', {}).get('p99_ms'))} | |")
    w("")

    # ---- chat
    w("## Chat")
    w("")
    w(f"{sz.chat_channels} channels × {sz.chat_members} members over the two nodes; every member sends in turn "
      f"(open loop, {fmt(sz.chat_step_s, 0)} s per step, rates {', '.join(str(r) for r in sz.chat_rates)} msg/s, "
      "stopping at the first failing step). A step passes when p99 send→deliver ≤ 50 ms, every delivery "
      "arrived live, and every send was acknowledged. For this project every message is persisted through "
      "the messaging service; the peers only relay.")
    w("")
    w("| | " + " | ".join(STACK_LABEL[s] for s in stacks) + " |")
    w("|---|" + "---|" * len(stacks))
    C = {s: res(results, "chat", s) for s in stacks}
    w("| highest passing rate (msg/s) | " + " | ".join(
        (fmt(C[s]["best_rate"]) if C[s]["best_rate"] is not None else "none passed") if C[s] else "—" for s in stacks) + " |")
    all_rates = sorted({st["rate"] for s in stacks if C[s] for st in C[s]["steps"]})
    for rate in all_rates:
        cells = []
        for s in stacks:
            st = next((x for x in (C[s] or {}).get("steps", []) if x["rate"] == rate), None)
            cells.append("—" if st is None else
                         f"p50 {fmt(st['latency']['p50_ms'])} / p99 {fmt(st['latency']['p99_ms'])} ms, "
                         f"missing {st['missing']}, send errors {st['send_errors']}, "
                         f"loadgen {st['loadgen_cpu_pct']:.0f} % → {'pass' if st['pass'] else 'FAIL'}")
        w(f"| {rate} msg/s | " + " | ".join(cells) + " |")
    w("")
    if C.get("ours") and C.get("node"):
        w(f"Ratio of highest passing rates, this project ÷ Node: {ratio(C['ours']['best_rate'], C['node']['best_rate'])}; "
          f"÷ plain python-socketio: {ratio(C['ours']['best_rate'], (C.get('py') or {}).get('best_rate'))}. "
          "(When the last step passed, the true limit is higher than the table says.)")
        w("")

    # ---- connections
    w("## Idle connections")
    w("")
    w(f"{sz.conn_count:,} WebSocket connections to **one** node process (after {100} warm-up connections), "
      "50 connects in flight (a failed connect is retried after 0.5–2 s, up to 5 attempts, and the retries "
      "count in the time); for this project each is an authenticated session (JWT check, `ready` "
      "with the user's guilds from the messaging service, a presence session), for the peers a bare Socket.IO "
      "connection. "
      "RSS per connection = (RSS after the connects and an idle pause − RSS after warm-up) ÷ connections.")
    w("")
    w("| | " + " | ".join(STACK_LABEL[s] for s in stacks) + " |")
    w("|---|" + "---|" * len(stacks))
    K = {s: res(results, "connections", s) for s in stacks}

    def krow(label: str, fn: Any, digits: int = 1) -> None:
        w(f"| {label} | " + " | ".join(fmt(fn(K[s]), digits) if K[s] else "—" for s in stacks) + " |")

    krow("connections open after idling", lambda k: k["open_after_idle"], 0)
    krow("connects that failed after 5 attempts", lambda k: k["failed"], 0)
    krow("connect retries", lambda k: k.get("connect_retries"), 0)
    krow("connects/s", lambda k: k["connects_per_s"], 0)
    krow("RSS per connection (KB)", lambda k: k["rss_per_conn_bytes"] / 1024, 1)
    krow("node RSS with all connections (MB)", lambda k: k["rss_after_bytes"] / 2**20, 0)
    krow("load generator CPU while connecting (%)", lambda k: k["connect_phase"]["loadgen_cpu_pct"], 0)
    krow("node CPU while connecting (% of one core)", lambda k: 100 * k["connect_phase"]["cpu_s"]["nodes"] / k["connect_phase"]["wall_s"], 0)
    krow("server CPU per connect, all server processes (ms)",
         lambda k: 1000 * sum(k["connect_phase"]["cpu_s"].values()) / _connects(k), 2)
    krow("load generator CPU per connect (ms)", lambda k: 1000 * k["connect_phase"]["loadgen_cpu_s"] / _connects(k), 2)
    krow("machine busy while connecting (cores of the 2)", lambda k: k["connect_phase"]["machine_busy_cores"], 2)
    w("")
    if K.get("ours"):
        k = K["ours"]
        per = {g: 1000 * v / _connects(k) for g, v in k["connect_phase"]["cpu_s"].items()}
        lg = 1000 * k["connect_phase"]["loadgen_cpu_s"] / _connects(k)
        w("This project's CPU per connect, by process group (ms): " + ", ".join(f"{g} {v:.2f}" for g, v in per.items())
          + f". The load generator spent {lg:.2f} ms on each of these connects (the token, `ready`, the user's own "
          f"`presence`): one load generator process at 100 % of its core could open at most {1000 / lg:,.0f} of "
          "them per second, however fast the servers were.")
        w("")
    if K.get("ours"):
        w(f"Ratios, this project ÷ Node / ÷ plain python-socketio: RSS per connection "
          f"{ratio(K['ours']['rss_per_conn_bytes'], (K.get('node') or {}).get('rss_per_conn_bytes'))} / "
          f"{ratio(K['ours']['rss_per_conn_bytes'], (K.get('py') or {}).get('rss_per_conn_bytes'))}; connects/s "
          f"{ratio(K['ours']['connects_per_s'], (K.get('node') or {}).get('connects_per_s'))} / "
          f"{ratio(K['ours']['connects_per_s'], (K.get('py') or {}).get('connects_per_s'))}.")
        w("")

    # ---- storm
    w("## Reconnect storm")
    w("")
    w(f"{sz.storm_clients:,} clients in {sz.storm_channels} channels over the two nodes; each channel also has a "
      f"sender that is not dropped and sends {sz.storm_rate} msg/s in total through the storm. All "
      f"{sz.storm_clients:,} transports are closed at once; the clients reconnect with socket.io-client's own "
      "backoff (first attempt after 0.5–1.5 s) and, on this project, call `sync` from their last contiguous "
      "`seq` after `ready` (and again whenever they see a hole). *All back* = the last client reconnected "
      "and (this project) its `sync` completed. Loss is counted per (member, acknowledged message) after a "
      "2 s drain, first as received, then after the clients' hole `sync`. The peers keep no history, so "
      "whatever was sent while a client was away is gone for it: their loss column is expected, not a bug.")
    w("")
    w("| | " + " | ".join(STACK_LABEL[s] for s in stacks) + " |")
    w("|---|" + "---|" * len(stacks))
    S = {s: res(results, "storm", s) for s in stacks}

    def srow(label: str, fn: Any, digits: int = 1) -> None:
        w(f"| {label} | " + " | ".join(fmt(fn(S[s]), digits) if S[s] else "—" for s in stacks) + " |")

    srow("clients back", lambda k: f"{k['back']:,}/{k['clients']:,}")
    srow("time until all back and caught up (s)", lambda k: k["all_back_s"], 2)
    srow("reconnect time p50 / p99 (ms)", lambda k: f"{fmt(k['reconnect_ms']['p50_ms'], 0)} / {fmt(k['reconnect_ms']['p99_ms'], 0)}")
    srow("back-and-caught-up time p50 / p99 (ms)", lambda k: f"{fmt(k['back_ms']['p50_ms'], 0)} / {fmt(k['back_ms']['p99_ms'], 0)}")
    srow("messages acknowledged during the run", lambda k: k["acked"], 0)
    srow("missing before the hole sync", lambda k: k["missing_before_settle"], 0)
    srow("lost: missing for clients back, after the hole sync", lambda k: k["lost"], 0)
    srow("clients not back at the end (their missing messages, not caught up yet)",
         lambda k: f"{k.get('not_back_at_end', 0):,} ({k.get('not_back_missing', 0):,})" if "not_back_at_end" in k else "—")
    srow("sync calls", lambda k: k["syncs"], 0)
    srow("load generator CPU during the storm (%)", lambda k: k["storm_phase"]["loadgen_cpu_pct"], 0)
    w("")

    # ---- targets
    w("## Against the targets")
    w("")
    w("Each target is a comparison with Node Socket.IO 4 measured in this same run (or an absolute figure where "
      "the target is one). *met* is computed from the figures above, not written by hand.")
    w("")
    w("| target | this project | Node Socket.IO 4 | met |")
    w("|---|---|---|---|")
    o = F.get("ours") or {}
    n = F.get("node") or {}

    def yes(cond: bool | None) -> str:
        return "—" if cond is None else ("yes" if cond else "no")

    if o and n:
        w(f"| server CPU per fanout delivery ≤ Node's (two nodes) | {fmt(o['us_nodes'])} µs | {fmt(n['us_nodes'])} µs | "
          f"{yes(o['us_nodes'] <= n['us_nodes'])} ({ratio(o['us_nodes'], n['us_nodes'])}) |")
    key = f"rate_{sz.fanout_rates[0]}"
    r20, n20 = (o.get(key) if o else None), (n.get(key) if n else None)
    if r20:
        p_o = r20["latency"]["p99_ms"]
        p_n = n20["latency"]["p99_ms"] if n20 else None
        w(f"| p99 at {sz.fanout_rates[0]:,} deliveries/s ≤ Node's | {fmt(p_o)} ms | {fmt(p_n)} ms | "
          f"{yes(p_o <= p_n if p_n is not None else None)} ({ratio(p_o, p_n)}) |")
    if K.get("ours"):
        m_o = K["ours"]["rss_per_conn_bytes"] / 1024
        m_n = K["node"]["rss_per_conn_bytes"] / 1024 if K.get("node") else None
        c_o = K["ours"]["connects_per_s"]
        c_n = K["node"]["connects_per_s"] if K.get("node") else None
        w(f"| idle memory per connection ≤ Node's | {m_o:.1f} KB | {fmt(m_n)} KB | "
          f"{yes(m_o <= m_n if m_n is not None else None)} ({ratio(m_o, m_n)}) |")
        w(f"| connects/s ≥ Node's | {c_o:,.0f} | {fmt(c_n, 0)} | "
          f"{yes(c_o >= c_n if c_n is not None else None)} ({ratio(c_o, c_n)}) |")
    if C.get("ours"):
        st = next((x for x in C["ours"]["steps"] if x["rate"] == 1000), None)
        if st:
            w(f"| chat: p99 ≤ 50 ms at 1,000 msg/s persisted, zero loss | p99 {fmt(st['latency']['p99_ms'])} ms, "
              f"missing {st['missing']}, send errors {st['send_errors']} | (relays only) | {yes(st['pass'])} |")
        else:
            last = C["ours"]["steps"][-1]["rate"] if C["ours"]["steps"] else "—"
            w(f"| chat: p99 ≤ 50 ms at 1,000 msg/s persisted, zero loss | not reached: the last step run "
              f"({last} msg/s) failed | (relays only) | no |")
    if S.get("ours"):
        so = S["ours"]
        met = so["all_back_s"] is not None and so["all_back_s"] <= 10 and so["lost"] == 0
        took = fmt(so["all_back_s"], 2) + " s" if so["all_back_s"] is not None else \
            f"{so['back']:,}/{so['clients']:,} back within {sz.storm_timeout_s:.0f} s"
        w(f"| reconnect storm of {so['clients']:,} clients caught up ≤ 10 s, zero loss | {took}, lost {so['lost']} "
          f"| (no history) | {yes(met)} |")
    w("")
    if C.get("ours") and C["ours"]["steps"]:
        w("### Where a persisted chat message's CPU goes (this project)")
        w("")
        w("Server CPU per message in each chat step, by process group (ms; each message is one `message:send`, "
          "its Postgres transaction, outbox entry and JetStream publish, and 10 deliveries). The chat ceiling on "
          "2 cores is roughly 2,000 ms ÷ the total.")
        w("")
        groups = sorted({g for st in C["ours"]["steps"] for g in st.get("cpu_s", {})})
        w("| msg/s | " + " | ".join(groups) + " | load generator | total |")
        w("|---|" + "---|" * (len(groups) + 2))
        for st in C["ours"]["steps"]:
            per = {g: 1000 * st.get("cpu_s", {}).get(g, 0.0) / max(1, st["messages"]) for g in groups}
            lg = 1000 * st.get("loadgen_cpu_s", 0.0) / max(1, st["messages"])
            w(f"| {st['rate']:,} | " + " | ".join(f"{per[g]:.3f}" for g in groups)
              + f" | {lg:.3f} | {sum(per.values()) + lg:.3f} |")
        w("")
    w("What the profiles show, what was changed and what stands in the way of the targets not met: "
      "[performance.md](performance.md).")
    w("")

    # ---- other load
    w("## Other load on the machine")
    w("")
    w("CPU used on the machine by processes outside the measured stack and the load generator during each "
      "measured phase (from `/proc/stat`, in cores of the 2), and the 1-minute load average when the scenario "
      "started. Where this is high, latencies and rates are pessimistic; CPU per delivery is not affected much.")
    w("")
    w("| scenario | " + " | ".join(STACK_LABEL[s] for s in stacks) + " |")
    w("|---|" + "---|" * len(stacks))
    for sc, by in results.items():
        if sc == "_notes":
            continue
        cells = []
        for s in stacks:
            r = by.get(s) or {}
            rr = r.get("result") or {}
            phs = ([p for p in rr.get("phases", [])] + [p for p in rr.get("steps", [])]
                   + ([rr["connect_phase"]] if "connect_phase" in rr else []) + ([rr["storm_phase"]] if "storm_phase" in rr else []))
            oth = [p["other_cores"] for p in phs if "other_cores" in p]
            la = r.get("loadavg_before")
            cells.append((f"other {min(oth):.2f}–{max(oth):.2f} cores" if oth else "—") + (f", load avg {la:.1f}" if la is not None else ""))
        w(f"| {sc} | " + " | ".join(cells) + " |")
    w("")

    # ---- notes kept with the results (e.g. a scenario re-run and merged)
    notes = results.get("_notes") if isinstance(results.get("_notes"), list) else []
    if notes:
        w("## Notes on this run")
        w("")
        for n_ in notes:
            w(f"- {n_}")
        w("")

    # ---- failures / sizes
    fails = [(sc, s, r.get("error", "")) for sc, by in results.items() if sc != "_notes"
             for s, r in by.items() if not r.get("ok")]
    w("## Sizes run and failures")
    w("")
    w(f"Sizes: fanout {sz.fanout_members:,} members; chat {sz.chat_channels}×{sz.chat_members}; "
      f"connections {sz.conn_count:,}; storm {sz.storm_clients:,} clients."
      + (" This was a `--quick` run: the connection and storm scenarios ran at these reduced sizes, not at "
         "10,000 and 5,000; run `make bench` for the full sizes." if quick else ""))
    w("")
    if fails:
        for sc, s, e in fails:
            w(f"- {sc} on {STACK_LABEL[s]} did not complete: `{e.strip().splitlines()[0][:300] if e else '?'}`")
    else:
        w("All scenarios completed on all stacks.")
    w("")
    if plots:
        w("## Plots")
        w("")
        for pth in plots:
            rel = os.path.relpath(pth, out.parent)
            w(f"![{Path(pth).stem}]({rel})")
            w("")
    w("## Reproducing")
    w("")
    w(f"`make bench` (full sizes; this run took {wall_s / 60:.1f} min) or `make bench BENCH_ARGS=--quick` "
      "(shorter phases, 2,000 connections, a 1,000-client storm; a few minutes). `--scenarios` and `--stacks` "
      "select a subset, `--ours-env CHAT_X=value` sets a setting of this project's processes. Progress lines "
      "are printed per phase; each scenario of this project leaves every process's `/metrics` under "
      "`.run/bench/`. How the figures were worked on: [performance.md](performance.md).")
    w("")
    out.write_text("\n".join(L))


def make_plots(results: dict[str, Any], stacks: list[str], sz: Sizes) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib not installed: no plots")
        return []
    d = BENCH / "plots"
    d.mkdir(exist_ok=True)
    made = []
    colors = {"ours": "tab:blue", "node": "tab:green", "py": "tab:orange"}

    def cdf(ax: Any, sample: list[float], label: str, color: str) -> None:
        if not sample:
            return
        ys = [(i + 1) / len(sample) for i in range(len(sample))]
        ax.plot(sample, ys, label=label, color=color)

    # fanout latency CDFs at the fixed rate
    if any(res(results, "fanout", s) for s in stacks):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for s in stacks:
            r = res(results, "fanout", s)
            if not r:
                continue
            for ph in r["phases"][1:]:
                if ph.get("half_saturation"):
                    cdf(axes[1], ph["latency"]["sample"], f"{STACK_LABEL[s]} ({ph['target_deliveries_per_s']:,}/s)", colors[s])
                elif ph["target_deliveries_per_s"] == sz.fanout_rates[0]:
                    cdf(axes[0], ph["latency"]["sample"], STACK_LABEL[s], colors[s])
        axes[0].set_title(f"Fanout latency CDF at {sz.fanout_rates[0]:,} deliveries/s")
        axes[1].set_title("Fanout latency CDF at half of each stack's saturation")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("send → deliver (ms, log)")
            ax.set_ylabel("fraction of deliveries")
            ax.axhline(0.99, color="grey", lw=0.5, ls="--")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        p = d / "fanout_latency.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        made.append(str(p))
        # throughput timelines at saturation
        fig, ax = plt.subplots(figsize=(8, 4))
        for s in stacks:
            r = res(results, "fanout", s)
            if r:
                tl = [x or 0 for x in r["phases"][0]["timeline"]]
                ax.plot(range(len(tl)), tl, marker="o", label=STACK_LABEL[s], color=colors[s])
        ax.set_title(f"Fanout deliveries per second at saturation ({sz.fanout_members:,} members)")
        ax.set_xlabel("second of the phase")
        ax.set_ylabel("deliveries/s")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        p = d / "fanout_throughput.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        made.append(str(p))
    if any(res(results, "chat", s) for s in stacks):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for s in stacks:
            r = res(results, "chat", s)
            if not r:
                continue
            xs = [st["rate"] for st in r["steps"]]
            axes[0].plot(xs, [st["latency"]["p99_ms"] or 0 for st in r["steps"]], marker="o", label=f"{STACK_LABEL[s]} p99", color=colors[s])
            axes[0].plot(xs, [st["latency"]["p50_ms"] or 0 for st in r["steps"]], marker=".", ls=":", label=f"{STACK_LABEL[s]} p50", color=colors[s])
            axes[1].plot(xs, [st["achieved_msgs_per_s"] * sz.chat_members for st in r["steps"]], marker="o", label=STACK_LABEL[s], color=colors[s])
        axes[0].axhline(50, color="red", lw=0.8, ls="--", label="50 ms")
        axes[0].set_yscale("log")
        axes[0].set_title("Chat: send → deliver latency by offered rate")
        axes[0].set_xlabel("offered msg/s")
        axes[0].set_ylabel("ms (log)")
        axes[1].set_title("Chat: deliveries/s offered and sent")
        axes[1].set_xlabel("offered msg/s")
        axes[1].set_ylabel("deliveries/s")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = d / "chat.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        made.append(str(p))
    return made


# ------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="fanout,chat,storm,connections")
    ap.add_argument("--stacks", default="ours,node,py")
    ap.add_argument("--quick", action="store_true", help="short phases, 2,000 connections, 1,000-client storm")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--from-results", help="only re-render the report and plots from a results JSON")
    ap.add_argument("--chat-rates", help="chat steps in msg/s, comma separated (e.g. 1000 to hold one rate)")
    ap.add_argument("--chat-step-s", type=float, help="seconds per chat step")
    ap.add_argument("--ours-env", action="append", default=[], metavar="CHAT_X=value",
                    help="a setting for this project's processes (repeatable), e.g. CHAT_TRACE_SAMPLE_RATIO=0.01")
    args = ap.parse_args()
    sz = QUICK if args.quick else Sizes()
    if args.chat_rates:
        sz = dataclasses.replace(sz, chat_rates=[int(r) for r in args.chat_rates.split(",")])
    if args.chat_step_s:
        sz = dataclasses.replace(sz, chat_step_s=args.chat_step_s)
    if args.from_results:
        data = json.loads(Path(args.from_results).read_text())
        sz = Sizes(**data["sizes"])
        stack_names = [s for s in args.stacks.split(",") if s]
        plots = make_plots(data["results"], stack_names, sz)
        write_report(data["results"], data["machine"], sz, data["quick"], Path(args.out), plots,
                     data.get("wall_s", 0.0), stack_names)
        say(f"re-rendered {args.out}")
        return 0
    scenarios = [s for s in args.scenarios.split(",") if s]
    stack_names = [s for s in args.stacks.split(",") if s]
    if not (NODE_DIR / "node_modules" / "socket.io").exists():
        print("bench/node/node_modules missing: run `cd bench/node && npm ci`", file=sys.stderr)
        return 2
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    speed_start = speed_check()
    say(f"speed check: {speed_start}")
    say(f"starting NATS, Redis and Postgres under {RUN_DIR}")
    # Postgres with its durable defaults (fsync, full-page writes), as in production: a
    # message is acknowledged only once its commit is on disk.
    servers = start_servers(RUN_DIR / "servers", fast_postgres=False)
    results: dict[str, dict[str, Any]] = {}
    try:
        ours_env = dict(kv.split("=", 1) for kv in args.ours_env)
        stacks = {"ours": OurStack(servers, ours_env), "node": PeerStack("node", servers), "py": PeerStack("py", servers)}
        for k, sc in enumerate(scenarios):
            for s in stack_names:
                say(f"[{k + 1}/{len(scenarios)}] {sc} / {STACK_LABEL[s]}")
                results.setdefault(sc, {})[s] = run_scenario(sc, stacks[s], sz)
    finally:
        servers.stop()
    info = machine()
    info["speed_start"], info["speed_end"] = speed_start, speed_check()
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / "latest.json").write_text(json.dumps(
        {"machine": info, "quick": args.quick, "sizes": sz.__dict__, "results": results,
         "wall_s": time.monotonic() - T0}, indent=1))
    plots = make_plots(results, stack_names, sz)
    out = Path(args.out)
    write_report(results, info, sz, args.quick, out, plots, time.monotonic() - T0, stack_names)
    say(f"wrote {out} and {len(plots)} plots under bench/plots/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
