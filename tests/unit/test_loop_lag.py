"""The event loop lag watch: a loop blocked by synchronous work shows up in the histogram,
the max gauge and the log; an idle loop stays near zero."""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import REGISTRY

from libs.observability import loop_lag


def _sum() -> float:
    return REGISTRY.get_sample_value("chat_process_event_loop_lag_seconds_sum") or 0.0


def _count() -> float:
    return REGISTRY.get_sample_value("chat_process_event_loop_lag_seconds_count") or 0.0


async def test_a_blocked_loop_is_measured_and_logged(caplog):
    caplog.set_level(logging.WARNING, logger="libs.observability.loop_lag")
    watch = asyncio.create_task(loop_lag.watch(interval_s=0.02, slow_s=0.1, period_s=0.05))
    try:
        await asyncio.sleep(0.1)  # idle: every wake is on time, give or take
        idle_sum, idle_count = _sum(), _count()
        assert idle_count >= 2 and idle_sum / idle_count < 0.05
        time.sleep(0.2)  # work that never yields
        await asyncio.sleep(0.05)
        assert _sum() - idle_sum >= 0.15
        assert (REGISTRY.get_sample_value("chat_process_event_loop_lag_max_seconds") or 0) >= 0.15
        assert any("event loop stalled" in r.getMessage() for r in caplog.records)
        # the spike stays in the max gauge for the period after it, then leaves it
        await asyncio.sleep(0.2)
        assert (REGISTRY.get_sample_value("chat_process_event_loop_lag_max_seconds") or 0) < 0.15
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
