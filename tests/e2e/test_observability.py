"""What operators rely on: every process's /metrics parses and carries the safety
report's counters; every metric the dashboard and alerts query exists on a live
process; one message:send is one trace from the socket event to the room emit."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from libs.servers.processes import free_port
from libs.testing.client import ChatClient, guild_with_members
from libs.testing.fixtures import Stack
from libs.testing.wire_fuzz import metric_total

ROOT = Path(__file__).resolve().parents[2]
METRIC_RE = re.compile(r"\bchat_[a-z0-9_]+\b")

SAFETY_REPORT_METRICS = {  # section 9 of the safety report, as /metrics/socket names them
    "total_connections", "active_connections", "failed_connections", "messages_sent", "messages_rejected",
    "events_processed", "events_rejected", "circuit_breaker_trips", "memory_leaks_fixed", "redis_reconnections",
}
EVERY_PROCESS = {"chat_breaker_state", "chat_dependency_up", "chat_bus_handled_total", "chat_process_ready",
                 "chat_process_asyncio_tasks", "chat_process_event_loop_lag_seconds",
                 "chat_process_event_loop_lag_max_seconds"}
GATEWAY = {"chat_gateway_connections_total", "chat_gateway_connections_active", "chat_gateway_connections_failed_total",
           "chat_gateway_messages_sent_total", "chat_gateway_messages_rejected_total",
           "chat_gateway_events_processed_total", "chat_gateway_events_rejected_total", "chat_breaker_trips_total",
           "chat_gateway_cleanup_operations_total", "chat_dependency_reconnects_total",
           "chat_gateway_event_duration_seconds", "chat_gateway_connect_duration_seconds",
           "chat_adapter_queue_depth_messages", "chat_adapter_dropped_total",
           "chat_ratelimit_rejected_total", "chat_gateway_rooms", "chat_bus_request_duration_seconds"}


async def scrape(http: aiohttp.ClientSession, port: int) -> str:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        return await r.text()


def exported_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.add(family.name + "_total")  # the parser strips counters' _total
        for sample in family.samples:
            names.add(sample.name)
    return names


def queried_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "deploy/grafana/chat-dashboard.json").read_text())
    exprs = [t.get("expr", "") for panel in dashboard.get("panels", []) for t in panel.get("targets", [])]
    for doc in yaml.safe_load_all((ROOT / "deploy/k8s/prometheusrule.yaml").read_text()):
        for group in (doc or {}).get("spec", {}).get("groups", []):
            exprs += [rule.get("expr", "") for rule in group.get("rules", [])]
    names = set()
    for expr in exprs:
        for name in METRIC_RE.findall(str(expr)):
            names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert names, "no metric queried?"
    return names


async def drive_traffic(http: aiohttp.ClientSession, stack: Stack) -> None:
    g1, g2 = stack.gateways
    alice = await ChatClient(http, g1, f"obs{uuid.uuid4().hex[:6]}").login()
    bob = await ChatClient(http, g2, f"obs{uuid.uuid4().hex[:6]}").login()
    guild = await guild_with_members(alice, bob)
    a = await alice.connect()
    b = await bob.connect()
    assert (await a.call("message:send", {"channel_id": guild["text_channel"], "content": "m", "nonce": "1"}))["ok"]
    await b.wait_for("message:created")
    await a.call("message:send", {"channel_id": "1", "content": ""})  # an error, counted
    await a.call("typing:start", {"channel_id": guild["text_channel"]})
    await alice.close()
    await bob.close()


async def test_metrics_parse_and_cover_the_safety_report_and_dashboards(cluster: Stack):
    gateways = [f"http://127.0.0.1:{p.ops_port}" for p in cluster.cluster.gateways]

    async def connects_timed() -> float:
        return sum([await metric_total(g, "chat_gateway_connect_duration_seconds_count") for g in gateways])

    before = await connects_timed()
    async with aiohttp.ClientSession() as http:
        await drive_traffic(http, cluster)
        assert await connects_timed() >= before + 2  # alice's and bob's connects, timed
        everything: set[str] = set()
        for proc in cluster.cluster.processes:
            names = exported_names(await scrape(http, proc.ops_port))
            assert EVERY_PROCESS <= names, (proc.name, EVERY_PROCESS - names)
            if proc.module == "gateway":
                assert GATEWAY <= names, GATEWAY - names
                async with http.get(f"http://127.0.0.1:{proc.ops_port}/metrics/socket") as r:
                    socket_metrics = await r.json()
                assert SAFETY_REPORT_METRICS <= set(socket_metrics), SAFETY_REPORT_METRICS - set(socket_metrics)
            everything |= names
    missing = queried_metrics() - everything
    assert not missing, f"dashboard/alerts query metrics no process exports: {missing}"


async def test_one_message_is_one_trace_from_socket_to_emit(own_stack):
    spans: list[tuple[str, str, str]] = []  # (trace id, service, span name)

    async def receive(request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        for rs in req.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "?")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans.append((span.trace_id.hex(), service, span.name))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        stack = own_stack(CHAT_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_BSP_SCHEDULE_DELAY="100")
        async with aiohttp.ClientSession() as http:
            alice = await ChatClient(http, stack.gateways[0], "tracer").login()
            guild = await guild_with_members(alice)
            a = await alice.connect()
            ack = await a.call("message:send", {"channel_id": guild["text_channel"], "content": "t", "nonce": "t"})
            assert ack["ok"]
            deadline = time.monotonic() + 10
            wanted = {("gateway", "socket.event message:send"),
                      ("gateway", "bus.request chat.svc.messaging.message_send"),
                      ("messaging", "bus.handle chat.svc.messaging.message_send"),
                      ("messaging", "db.connection"),
                      ("messaging", "room.emit message:created")}
            while time.monotonic() < deadline:
                root = [t for t, svc, name in spans if name == "socket.event message:send"]
                if root:
                    in_trace = {(svc, name) for t, svc, name in spans if t == root[0]}
                    if wanted <= in_trace:
                        break
                await asyncio.sleep(0.2)
            await alice.close()
        assert root, spans
        in_trace = {(svc, name) for t, svc, name in spans if t == root[0]}
        assert wanted <= in_trace, wanted - in_trace
    finally:
        await runner.cleanup()
