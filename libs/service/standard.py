"""Routes and handlers every service process has besides /livez, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from libs.bus import schemas, subjects
from libs.ops.server import json_response
from libs.resilience.breaker import snapshot_all
from libs.service.runner import ProcessContext

BUS_SERVICE_NAME = {"voice_bridge": "voice"}


async def register_ping(ctx: ProcessContext) -> None:
    """``chat.svc.<service>.ping``: lets operators and tests see which replicas answer."""
    assert ctx.bus is not None
    service = BUS_SERVICE_NAME.get(ctx.service, ctx.service)

    async def ping(_req: schemas.Empty) -> schemas.Pong:
        return schemas.Pong(service=ctx.service, node=ctx.node_id)

    await ctx.bus.serve(subjects.service_request(service, subjects.ServiceOps.PING), ping, schemas.Empty,
                        queue=subjects.queue_group(service))


def add_status_routes(ctx: ProcessContext, health: Callable[[], dict[str, Any]]) -> None:
    """``/status/circuit-breakers`` and ``/health`` (dependency states) on the ops port."""

    async def breakers(_request: web.Request) -> web.Response:
        return json_response(snapshot_all())

    async def health_route(_request: web.Request) -> web.Response:
        return json_response(health())

    ctx.ops.add_get("/status/circuit-breakers", breakers)
    ctx.ops.add_get("/health", health_route)
