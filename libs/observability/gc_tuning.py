"""The cyclic garbage collector of a long-lived server process: thresholds, a freeze of
what start-up built, and the time collections take.

With python's default thresholds (700, 10, 10) a gateway holding thousands of sockets
collected its young generation every 700 net allocations and, while connections were
growing, ran full collections over every object it held: in a reconnect storm of 5,000
clients the two gateways spent 1.8-2.4 s in the collector, with full collections of about
150 ms each that stalled the event loop. Reference counting frees almost everything; the
collector is only for cycles, so it runs far less often here (``CHAT_GC_THRESHOLDS``).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

GC_SECONDS = Counter("chat_process_gc_seconds_total", "Time spent in the cyclic garbage collector",
                     ["generation"])
GC_PAUSES = Histogram("chat_process_gc_pause_seconds", "Duration of each cyclic garbage collection",
                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))

_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    GC_SECONDS.labels(str(info.get("generation", "?"))).inc(took)
    GC_PAUSES.observe(took)


def configure(thresholds: tuple[int, int, int]) -> None:
    """Set the thresholds and time every collection (once per process)."""
    gc.set_threshold(*thresholds)
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def freeze_startup() -> None:
    """Collect once, then move everything start-up built (modules, settings, pools) out of
    the collector's sight: later collections no longer walk it."""
    gc.collect()
    gc.freeze()
    log.debug("gc: %d start-up objects frozen", gc.get_freeze_count())
