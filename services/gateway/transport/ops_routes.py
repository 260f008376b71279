"""Gateway ops endpoints: /health/socket, /metrics/socket, /status/circuit-breakers,
POST /admin/socket/recovery (admin token)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY

from libs.bus.client import Bus
from libs.ops.server import json_response
from libs.resilience.breaker import REGISTRY as BREAKERS
from libs.resilience.breaker import half_open_all, snapshot_all
from libs.sio.redis_manager import ResilientRedisManager

log = logging.getLogger(__name__)


def _metric_total(name: str) -> float:
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


class GatewayOps:
    def __init__(self, manager: ResilientRedisManager, bus: Bus, admin_token: str,
                 active_connections: Callable[[], int]) -> None:
        self.manager = manager
        self.bus = bus
        self.admin_token = admin_token
        self.active_connections = active_connections

    def install(self, add_get: Callable[..., None], add_post: Callable[..., None]) -> None:
        add_get("/health/socket", self.health)
        add_get("/metrics/socket", self.socket_metrics)
        add_get("/status/circuit-breakers", self.breakers)
        add_post("/admin/socket/recovery", self.recovery)

    def health_snapshot(self) -> dict[str, Any]:
        redis = self.manager.health()
        nats = self.bus.health()
        deps = {"redis": redis, "nats": nats}
        states = [redis["state"], nats["state"]]
        if all(s == "up" for s in states) and all(b.state == "closed" for b in BREAKERS.values()):
            status = "ok"
        elif all(s == "down" for s in states):
            status = "down"
        else:
            status = "degraded"
        return {"status": status, "dependencies": deps, "breakers": snapshot_all(),
                "connections": self.active_connections()}

    async def health(self, _request: web.Request) -> web.Response:
        snap = self.health_snapshot()
        return json_response(snap, status=200 if snap["status"] != "down" else 503)

    async def socket_metrics(self, _request: web.Request) -> web.Response:
        return json_response({
            "total_connections": _metric_total("chat_gateway_connections_total"),
            "active_connections": self.active_connections(),
            "failed_connections": _metric_total("chat_gateway_connections_failed_total"),
            "messages_sent": _metric_total("chat_gateway_messages_sent_total"),
            "messages_rejected": _metric_total("chat_gateway_messages_rejected_total"),
            "events_processed": _metric_total("chat_gateway_events_processed_total"),
            "events_rejected": _metric_total("chat_gateway_events_rejected_total"),
            "circuit_breaker_trips": _metric_total("chat_breaker_trips_total"),
            "memory_leaks_fixed": _metric_total("chat_gateway_cleanup_operations_total")
            + _metric_total("chat_cleanup_removed_total"),
            "redis_reconnections": self.manager.reconnects,
            "adapter_queue_depth": len(self.manager.queue),
            "adapter_dropped": _metric_total("chat_adapter_dropped_total"),
        })

    async def breakers(self, _request: web.Request) -> web.Response:
        return json_response(snapshot_all())

    async def recovery(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        if not self.admin_token or not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return json_response({"error": {"code": "unauthorized", "message": "admin token required"}}, status=401)
        touched = half_open_all()
        await self.manager.force_reconnect()
        log.warning("admin recovery: breakers half-opened %s; Redis connections reset", touched)
        return json_response({"ok": True, "half_opened": touched})
