"""Circuit breaker per dependency.

closed --(N consecutive failures)--> open --(after open_s)--> half_open
half_open --(close_after successes)--> closed;  half_open --(a failure)--> open.
While open every call fails fast with :class:`Unavailable`. Every transition is counted
and logged; :meth:`snapshot` feeds ``/status/circuit-breakers``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from libs.errors import ChatError, Unavailable
from libs.observability import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failures: int = 5,
        open_s: float = 60.0,
        half_open_probes: int = 3,
        close_after: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failures
        self.open_s = open_s
        self.half_open_probes = half_open_probes
        self.close_after = close_after
        self._clock = clock
        self.state = "closed"
        self.failures = 0
        self.successes = 0
        self.in_flight_probes = 0
        self.opened_at = 0.0
        self.half_opened_at = 0.0
        self.last_change = time.time()
        self.trips = 0
        metrics.BREAKER_STATE.labels(name).set(0)
        REGISTRY[name] = self

    # -- state machine -------------------------------------------------------------
    def _move(self, state: str) -> None:
        if state == self.state:
            return
        log.warning("breaker %s: %s -> %s", self.name, self.state, state,
                    extra={"breaker": self.name, "failures": self.failures})
        metrics.BREAKER_TRANSITIONS.labels(self.name, state).inc()
        metrics.BREAKER_STATE.labels(self.name).set(STATE_VALUE[state])
        if state == "half_open":
            self.half_opened_at = self._clock()
        if state == "open":
            self.trips += 1
            metrics.BREAKER_TRIPS.labels(self.name).inc()
            self.opened_at = self._clock()
        self.state = state
        self.last_change = time.time()
        self.successes = 0
        self.in_flight_probes = 0

    def allow(self) -> bool:
        """May a call go through now? (Reserves a probe slot when half-open.)"""
        if self.state == "open" and self._clock() - self.opened_at >= self.open_s:
            self._move("half_open")
        if self.state == "closed":
            return True
        if self.state == "half_open" and self.in_flight_probes < self.half_open_probes:
            self.in_flight_probes += 1
            return True
        return False

    def record_success(self) -> None:
        self.failures = 0
        if self.state == "half_open":
            self.in_flight_probes = max(0, self.in_flight_probes - 1)
            self.successes += 1
            if self.successes >= self.close_after:
                self._move("closed")

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.state == "closed" and self.failures >= self.failure_threshold:
            self._move("open")

    def half_open(self) -> None:
        """Let probes through now (admin recovery, or a health probe that succeeded)."""
        if self.state == "open":
            self._move("half_open")

    def start_prober(self, probe: Callable[[], Awaitable[bool]], backoff: Any) -> asyncio.Task[None]:
        """While open, run ``probe`` on the reconnect backoff schedule (1 s -> 30 s); the
        first success half-opens the breaker, so recovery does not wait out ``open_s``
        once the dependency is back. Returns the task (cancel it on shutdown)."""
        async def attempt() -> bool:
            try:
                return bool(await asyncio.wait_for(probe(), 3))
            except asyncio.CancelledError:
                raise
            except Exception:
                return False

        async def run() -> None:
            while True:
                if self.state == "closed":
                    backoff.reset()
                    await asyncio.sleep(0.5)
                    continue
                if self.state == "half_open":
                    # Probes count like calls, so the breaker closes even when no traffic comes.
                    if self.allow():
                        if await attempt():
                            self.record_success()
                        else:
                            self.record_failure()
                    elif self._clock() - self.half_opened_at > 5.0:
                        # Probe slots whose callers never reported back: let new probes in.
                        self.in_flight_probes = 0
                        self.half_opened_at = self._clock()
                    await asyncio.sleep(1.0)
                    continue
                await asyncio.sleep(backoff.next_delay())
                if self.state == "open" and await attempt():
                    log.info("breaker %s: probe succeeded", self.name)
                    self.half_open()

        return asyncio.create_task(run(), name=f"breaker-prober-{self.name}")

    def retry_after_s(self) -> float:
        if self.state != "open":
            return 0.0
        return max(0.0, self.open_s - (self._clock() - self.opened_at))

    # -- call helpers ----------------------------------------------------------------
    def guard(self, *, counts: Callable[[BaseException], bool] | None = None) -> _Guard:
        """``async with breaker.guard():`` runs a block under the breaker. Errors the caller
        caused (ChatError other than Unavailable) do not count as dependency failures.
        A small class, not an ``asynccontextmanager``: it is entered twice per bus request
        and once per database call, and a generator-based one cost several times more."""
        return _Guard(self, counts)

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async with self.guard():
            return await fn(*args, **kwargs)

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failures": self.failures,
            "trips": self.trips,
            "last_change": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_change)),
            "retry_after_ms": int(self.retry_after_s() * 1000),
        }


class _Guard:
    __slots__ = ("breaker", "counts")

    def __init__(self, breaker: CircuitBreaker, counts: Callable[[BaseException], bool] | None) -> None:
        self.breaker = breaker
        self.counts = counts

    async def __aenter__(self) -> None:
        br = self.breaker
        if not br.allow():
            metrics.BREAKER_REJECTIONS.labels(br.name).inc()
            raise Unavailable(f"{br.name} unavailable (circuit open)", retry_after_ms=int(br.retry_after_s() * 1000))

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        # Returns None: the error, if any, goes on to the caller.
        if exc is None:
            self.breaker.record_success()
        elif self.counts(exc) if self.counts else _is_dependency_failure(exc):
            self.breaker.record_failure()
        else:
            self.breaker.record_success()


def _is_dependency_failure(exc: BaseException) -> bool:
    if isinstance(exc, asyncio.CancelledError):
        return False
    if isinstance(exc, ChatError):
        return isinstance(exc, Unavailable)
    return isinstance(exc, Exception)


REGISTRY: dict[str, CircuitBreaker] = {}


def snapshot_all() -> dict[str, dict[str, Any]]:
    return {name: b.snapshot() for name, b in sorted(REGISTRY.items())}


def half_open_all() -> list[str]:
    touched = []
    for b in REGISTRY.values():
        if b.state == "open":
            b.half_open()
            touched.append(b.name)
    return touched
