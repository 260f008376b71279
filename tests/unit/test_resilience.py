from __future__ import annotations

import asyncio
import time

import pytest

from libs.errors import Invalid, Unavailable
from libs.resilience.backoff import Backoff
from libs.resilience.breaker import CircuitBreaker
from libs.sio.outbound_queue import OutboundQueue


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_backoff_doubles_to_the_cap_with_jitter_and_never_stops():
    b = Backoff(initial=1, maximum=30, factor=2, down_after=10, jitter=0.2)
    delays = [b.next_delay() for _ in range(15)]
    for n, d in enumerate(delays):
        base = min(30, 2 ** n)
        assert base * 0.8 <= d <= base * 1.2
    assert b.down and b.attempts == 15
    b.reset()
    assert not b.down and 0.8 <= b.next_delay() <= 1.2


def test_breaker_opens_after_five_failures_and_closes_after_three_probes():
    clock = Clock()
    br = CircuitBreaker("t1", failures=5, open_s=60, half_open_probes=3, close_after=3, clock=clock)
    for _ in range(4):
        assert br.allow()
        br.record_failure()
    assert br.state == "closed"
    br.record_failure()
    assert br.state == "open" and not br.allow()
    clock.t = 59.9
    assert not br.allow()
    clock.t = 60.0
    assert br.allow() and br.state == "half_open"
    assert br.allow() and br.allow()
    assert not br.allow()  # only 3 probes at once
    for _ in range(3):
        br.record_success()
    assert br.state == "closed"


def test_breaker_half_open_failure_reopens():
    clock = Clock()
    br = CircuitBreaker("t2", failures=1, open_s=10, clock=clock)
    br.record_failure()
    clock.t = 10
    assert br.allow()
    br.record_failure()
    assert br.state == "open" and br.trips == 2


async def test_breaker_guard_counts_only_dependency_failures():
    br = CircuitBreaker("t3", failures=2, open_s=60)
    for _ in range(5):
        with pytest.raises(Invalid):
            async with br.guard():
                raise Invalid("caller's fault")
    assert br.state == "closed"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            async with br.guard():
                raise ConnectionError("down")
    with pytest.raises(Unavailable) as exc:
        async with br.guard():
            pass
    assert exc.value.extra["retry_after_ms"] > 0


def test_outbound_queue_bounds_each_room_and_drops_oldest():
    q = OutboundQueue(per_room=3, ttl_s=300)
    for i in range(5):
        q.put("ch:1", i)
    q.put("ch:2", "x")
    assert len(q) == 4
    taken = q.take(10)
    assert [v for r, v in taken if r == "ch:1"] == [2, 3, 4]
    assert q.take_lossy_rooms() == {"ch:1"}
    assert len(q) == 0


def test_outbound_queue_expires_entries_and_put_back_keeps_order():
    clock = Clock()
    q = OutboundQueue(per_room=10, ttl_s=300, clock=clock)
    q.put("ch:1", "old")
    clock.t = 301
    q.put("ch:1", "new")
    assert q.take(10) == [("ch:1", "new")]
    assert "ch:1" in q.take_lossy_rooms()
    q.put("ch:1", "c")
    batch = q.take(1)
    q.put("ch:1", "d")
    q.put_back(batch)
    assert [v for _, v in q.take(10)] == ["c", "d"]


async def test_cancelled_error_is_not_a_failure():
    br = CircuitBreaker("t4", failures=1)
    with pytest.raises(asyncio.CancelledError):
        async with br.guard():
            raise asyncio.CancelledError()
    assert br.state == "closed"


async def test_local_fallback_limiter_is_a_moving_window_and_forgets_idle_keys():
    from limits import parse

    from libs.ratelimit.limiter import LocalMovingWindow

    local = LocalMovingWindow(sweep_s=0.5)
    item = parse("3/second")
    assert [local.hit(item, "send", "u1") for _ in range(4)] == [True, True, True, False]
    assert local.hit(item, "send", "u2")  # keys are separate
    stats = await local.get_window_stats(item, "send", "u1")
    assert stats.remaining == 0 and 0 < stats.reset_time - time.time() <= 1.0
    await asyncio.sleep(1.05)  # the first hits leave the window
    assert local.hit(item, "send", "u1")
    assert len(local) == 1  # the sweep dropped u2, idle for a whole window
    await asyncio.sleep(1.05)
    assert local.hit(item, "send", "u3")
    assert len(local) == 1  # and now u1

