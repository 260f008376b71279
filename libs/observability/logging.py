"""Structured logging: one JSON object per line in production, readable text in dev.

Every record carries service and node; handlers add user, session and trace ids through
``extra=`` or the context variables below. Message bodies are never logged.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

user_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("user_id", default=None)
session_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class _ContextFilter(logging.Filter):
    def __init__(self, service: str, node: str) -> None:
        super().__init__()
        self.service = service
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.node = self.node
        if not hasattr(record, "user_id"):
            record.user_id = user_id_var.get()
        if not hasattr(record, "session_id"):
            record.session_id = session_id_var.get()
        if not hasattr(record, "trace_id"):
            record.trace_id = _current_trace_id()
        return True


def _current_trace_id() -> str | None:
    try:
        from opentelemetry import trace

        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            return format(ctx.trace_id, "032x")
    except Exception:  # pragma: no cover - tracing is optional here
        return None
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD and value is not None and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STD and k not in ("service", "node") and v is not None and not k.startswith("_")
        )
        line = (
            f"{time.strftime('%H:%M:%S', time.localtime(record.created))}.{int(record.msecs):03d} "
            f"{record.levelname[:4]} {getattr(record, 'node', '')} {record.name}: {record.getMessage()}"
        )
        if extras:
            line += f"  [{extras}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(service: str, node: str, fmt: str = "text", level: str = "INFO") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter(service, node))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty libraries: their own errors surface through our logs and counters.
    for name in ("engineio", "socketio", "aiohttp.access", "nats"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # asyncpg logs every failed pool refill with a traceback; our own adapter logs the outage once.
    logging.getLogger("asyncpg").setLevel(logging.ERROR)
