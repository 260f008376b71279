"""Gateway metrics: the safety report's section 9 list and per-event detail."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from libs.observability.metrics import LATENCY_BUCKETS

CONNECTIONS_TOTAL = Counter("chat_gateway_connections_total", "Accepted socket connections (lifetime)")
CONNECTIONS_ACTIVE = Gauge("chat_gateway_connections_active", "Connected sockets on this node")
CONNECTS_WAITING = Gauge("chat_gateway_connects_waiting",
                         "Authenticated connects waiting for their turn (CHAT_CONNECT_CONCURRENCY are handled at once)")
CONNECTIONS_FAILED = Counter("chat_gateway_connections_failed_total", "Refused or failed connection attempts", ["code"])
DISCONNECTS = Counter("chat_gateway_disconnects_total", "Socket disconnects", ["reason"])
MESSAGES_SENT = Counter("chat_gateway_messages_sent_total", "message:send / dm:send acknowledged ok")
MESSAGES_REJECTED = Counter("chat_gateway_messages_rejected_total", "message:send / dm:send refused", ["code"])
EVENTS_PROCESSED = Counter("chat_gateway_events_processed_total", "Client events handled", ["event"])
EVENTS_REJECTED = Counter("chat_gateway_events_rejected_total", "Client events answered with an error", ["event", "code"])
CONNECT_SECONDS = Histogram("chat_gateway_connect_duration_seconds",
                            "Authenticated connects, from the CONNECT packet to the session being ready (checks, "
                            "token, the wait for a slot, ready, presence)", buckets=LATENCY_BUCKETS)
EVENT_SECONDS = Histogram("chat_gateway_event_duration_seconds", "Client event handling time", ["event"], buckets=LATENCY_BUCKETS)
RATE_LIMITED = Counter("chat_gateway_rate_limited_total", "Rate-limit rejections", ["event"])
CLEANUP_OPS = Counter("chat_gateway_cleanup_operations_total", "Resources released on disconnect or by sweeps", ["kind"])
SESSIONS = Gauge("chat_gateway_sessions_users", "Distinct users connected to this node")
ROOMS = Gauge("chat_gateway_rooms", "Socket.IO rooms on this node")
HTTP_REQUESTS = Counter("chat_gateway_http_requests_total", "HTTP API requests", ["route", "status"])
PENDING_READY = Gauge("chat_gateway_pending_ready", "Connected sockets waiting for their ready event")
