from __future__ import annotations

import io
import json
import logging

from libs.observability.logging import JsonFormatter, _ContextFilter, session_id_var, user_id_var


def test_json_logs_carry_service_node_user_session_and_extras():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_ContextFilter("gateway", "gw-1"))
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    user_id_var.set("alice")
    session_id_var.set("s-1")
    logger.info("connected", extra={"sid": "abc"})
    line = json.loads(stream.getvalue())
    assert {k: line[k] for k in ("level", "msg", "service", "node", "user_id", "session_id", "sid")} == {
        "level": "info", "msg": "connected", "service": "gateway", "node": "gw-1", "user_id": "alice",
        "session_id": "s-1", "sid": "abc"}
    assert line["ts"].endswith("Z")


def test_spans_exist_only_when_something_receives_them():
    """Without an exporter a span is the shared no-op (no ids, nothing in NATS headers);
    with one, spans are real, their ids go into headers and log records."""
    import logging as std_logging

    from opentelemetry import trace
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from libs.observability import tracing
    from libs.observability.logging import _ContextFilter

    tracer = trace.get_tracer("test")
    record = std_logging.LogRecord("t", std_logging.INFO, __file__, 1, "m", None, None)
    try:
        tracing.setup_tracing("svc", "node-1")
        assert not tracing.recording()
        with tracing.span(tracer, "off") as span:
            assert not span.get_span_context().is_valid
            assert tracing.inject_headers({"x": "1"}) == {"x": "1"}
        assert tracing.extract_context({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None

        exporter = InMemorySpanExporter()
        provider = tracing.setup_tracing("svc", "node-1", exporter=exporter)
        assert tracing.recording()
        with tracing.span(provider.get_tracer("test-2"), "on") as span:
            assert span.get_span_context().is_valid
            assert tracing.inject_headers()["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
            _ContextFilter("svc", "node-1").filter(record)
            assert record.trace_id == format(span.get_span_context().trace_id, "032x")
        provider.force_flush()
        assert [s.name for s in exporter.get_finished_spans()] == ["on"]
    finally:
        tracing.setup_tracing("svc", "node-1")
