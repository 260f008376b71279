"""How late the event loop runs what is due: the delay every callback, reply and timer of
the process pays on top of its own work.

A task asks to wake every ``interval_s`` and records how much later than that it woke.
An idle loop wakes within a fraction of a millisecond; a loop busy with a burst (a
reconnect storm's handshakes, a fan-out) wakes late by about the length of one pass over
everything that was ready, and so does every bus reply and socket write waiting in that
pass. A lag beyond ``slow_s`` is logged, with the time the loop was stalled.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge, Histogram

log = logging.getLogger(__name__)

LAG = Histogram("chat_process_event_loop_lag_seconds",
                "How much later than asked the event loop woke a periodic timer",
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
LAG_MAX = Gauge("chat_process_event_loop_lag_max_seconds",
                "The largest event loop lag of this period and the one before (periods of 15 s)")

INTERVAL_S = 0.25
PERIOD_S = 15.0  # the max gauge covers this long: about one Prometheus scrape


async def watch(interval_s: float = INTERVAL_S, slow_s: float = 1.0, period_s: float = PERIOD_S) -> None:
    """Record the loop's lag until cancelled."""
    loop = asyncio.get_running_loop()
    worst = before = 0.0  # the largest lag of this period, of the one before
    period_start = loop.time()
    while True:
        asked = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        now = loop.time()
        lag = max(0.0, now - asked)
        LAG.observe(lag)
        worst = max(worst, lag)
        LAG_MAX.set(max(worst, before))  # a spike stays visible for a whole period after it
        if lag >= slow_s:
            log.warning("event loop stalled: a %.2f s timer woke %.2f s late", interval_s, lag)
        if now - period_start >= period_s:
            before, worst = worst, 0.0
            period_start = now
