"""Prometheus metrics shared by every process, named ``chat_<subsystem>_<name>_<unit>``.

Process-specific metrics live next to the code that moves them; the ones here are used
by the shared libraries (bus, breakers, Redis adapter, ops server) in every process.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Breakers
BREAKER_STATE = Gauge("chat_breaker_state", "Breaker state (0 closed, 1 half-open, 2 open)", ["breaker"])
BREAKER_TRANSITIONS = Counter("chat_breaker_transitions_total", "Breaker state changes", ["breaker", "to"])
BREAKER_TRIPS = Counter("chat_breaker_trips_total", "Times a breaker opened", ["breaker"])
BREAKER_REJECTIONS = Counter("chat_breaker_rejections_total", "Calls refused by an open breaker", ["breaker"])

# Dependencies
DEPENDENCY_UP = Gauge("chat_dependency_up", "1 when the dependency connection is up", ["dependency"])
DEPENDENCY_RECONNECTS = Counter("chat_dependency_reconnects_total", "Reconnections of a dependency", ["dependency"])
LOOP_ERRORS = Counter("chat_loop_errors_total", "Errors reported by the event loop's exception handler")
DEPENDENCY_ERRORS = Counter("chat_dependency_errors_total", "Errors talking to a dependency", ["dependency"])

# Bus
BUS_REQUESTS = Counter("chat_bus_requests_total", "NATS requests sent, by subject kind and outcome", ["subject", "outcome"])
BUS_REQUEST_SECONDS = Histogram("chat_bus_request_duration_seconds", "NATS request latency", ["subject"], buckets=LATENCY_BUCKETS)
BUS_HANDLED = Counter("chat_bus_handled_total", "NATS requests handled, by subject kind and outcome", ["subject", "outcome"])
BUS_HANDLE_SECONDS = Histogram("chat_bus_handle_duration_seconds", "Time to handle a NATS request", ["subject"], buckets=LATENCY_BUCKETS)

# Socket.IO adapter (Redis pub/sub)
ADAPTER_QUEUE_DEPTH = Gauge("chat_adapter_queue_depth_messages", "Cross-node emits waiting for Redis")
ADAPTER_DROPPED = Counter("chat_adapter_dropped_total", "Cross-node emits dropped", ["reason"])
ADAPTER_PUBLISHED = Counter("chat_adapter_published_total", "Cross-node emits published to Redis")
ADAPTER_RECEIVED = Counter("chat_adapter_received_total", "Cross-node messages received from Redis")
ADAPTER_LISTENER_UP = Gauge("chat_adapter_listener_up", "1 while this node's pub/sub listener is subscribed")
ADAPTER_LISTENER_GAPS = Counter("chat_adapter_listener_gaps_total", "Times the pub/sub listener lost its subscription")
ADAPTER_SYNC_REQUIRED = Counter("chat_adapter_sync_required_total", "sync:required notices sent after listener gaps")

# Cleanup
CLEANUP_RUNS = Counter("chat_cleanup_runs_total", "Cleanup job runs", ["job"])
CLEANUP_REMOVED = Counter("chat_cleanup_removed_total", "Items removed by cleanup jobs", ["job"])

# Process
READY = Gauge("chat_process_ready", "1 when /readyz answers 200")
