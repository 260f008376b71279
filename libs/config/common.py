"""Settings every process shares: dependencies, ops port, logging, bus timeouts."""

from __future__ import annotations

from dataclasses import dataclass

from libs.config.settings import setting


def parse_thresholds(text: str) -> tuple[int, int, int]:
    """``"50000,10,10"`` -> (50000, 10, 10); ValueError unless three positive integers."""
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 3 or any(p <= 0 for p in parts):
        raise ValueError("three positive integers: gen0 allocations, gen1 and gen2 collection counts")
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class CommonSettings:
    node_id: str = setting("", "Unique name of this process in the cluster (default: service-hostname-pid)")
    nats_url: str = setting("nats://127.0.0.1:4222", "NATS server URL(s), comma separated")
    redis_url: str = setting("redis://127.0.0.1:6379/0", "Redis URL (Socket.IO adapter, rate limits, presence)")
    database_url: str = setting("postgresql://postgres@127.0.0.1:5432/chat", "Postgres DSN")
    ops_host: str = setting("127.0.0.1", "Interface of the ops HTTP server (/livez, /readyz, /metrics)")
    ops_port: int = setting(9000, "Port of the ops HTTP server")
    log_format: str = setting("text", "Log format: json (production) or text (dev)")
    log_level: str = setting("INFO", "Log level")
    dev_mode: bool = setting(False, "Development mode: HS256 dev tokens, /api/v1/dev/token")
    otlp_endpoint: str = setting("", "OTLP/HTTP traces endpoint; tracing export is off when empty")
    trace_sample_ratio: float = setting(1.0, "Share of new traces recorded when an OTLP endpoint is set (0..1); a trace started elsewhere keeps its caller's decision")
    sio_channel: str = setting("chat-socketio", "Redis pub/sub channel of the Socket.IO adapter")
    bus_request_timeout_s: float = setting(3.0, "Timeout of a NATS request before it answers unavailable")
    backoff_initial_s: float = setting(1.0, "Reconnect backoff: first delay")
    backoff_max_s: float = setting(30.0, "Reconnect backoff: largest delay")
    backoff_factor: float = setting(2.0, "Reconnect backoff: multiplier")
    backoff_down_after: int = setting(10, "Failed reconnect attempts before a dependency is reported down")
    breaker_failures: int = setting(5, "Consecutive failures that open a breaker")
    breaker_open_s: float = setting(60.0, "How long a breaker stays open before half-open probes")
    breaker_half_open_probes: int = setting(3, "Concurrent probes allowed while half-open")
    breaker_close_after: int = setting(3, "Successful probes that close a half-open breaker")
    drain_grace_s: float = setting(30.0, "Grace period on SIGTERM before the process exits")
    gc_thresholds: str = setting("50000,10,10", "Cyclic garbage collector thresholds: gen0 allocations, gen1 and gen2 collection counts (python's default: 700,10,10)")
    admin_token: str = setting("", "Bearer token of the admin ops endpoints", secret=True)

    def warnings(self) -> list[str]:
        """Settings that are valid but unfit for production; logged at start and by ``--check-config``."""
        return []

    def validate(self) -> list[str]:
        problems = []
        if self.log_format not in ("json", "text"):
            problems.append("CHAT_LOG_FORMAT: must be json or text")
        if not (0 < self.ops_port < 65536):
            problems.append("CHAT_OPS_PORT: out of range")
        if self.bus_request_timeout_s <= 0:
            problems.append("CHAT_BUS_REQUEST_TIMEOUT_S: must be > 0")
        try:
            parse_thresholds(self.gc_thresholds)
        except ValueError as exc:
            problems.append(f"CHAT_GC_THRESHOLDS: {exc}")
        return problems
