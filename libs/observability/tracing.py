"""OpenTelemetry tracing: a tracer provider per process, OTLP export when configured,
and W3C ``traceparent`` propagation through NATS headers."""

from __future__ import annotations

from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

_provider: TracerProvider | None = None


def setup_tracing(service: str, node: str, otlp_endpoint: str = "",
                  exporter: SpanExporter | None = None, sample_ratio: float = 1.0) -> TracerProvider:
    """Install the process's tracer provider. Spans are always created (ids appear in
    logs and travel in NATS headers); they are recorded and exported only when an endpoint
    or exporter is given: without one, recording them would only cost CPU (a fifth of the
    gateway's per message). Below a ratio of 1, only that share of new traces is recorded
    (the rest cost an id and a context); a trace that arrives with a caller's decision
    (NATS headers) follows it."""
    global _provider
    if exporter is None and not otlp_endpoint:
        sample_ratio = 0.0  # nothing would receive a recorded span: ids and context only
    sampler = ParentBased(TraceIdRatioBased(min(1.0, max(0.0, sample_ratio)))) if sample_ratio < 1.0 else None
    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.instance.id": node}),
                              sampler=sampler)
    if exporter is None and otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, Any] | None) -> context.Context:
    return propagate.extract(headers or {})
