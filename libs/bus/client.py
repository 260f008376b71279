"""The NATS bus: a connection that never gives up, typed request/reply, queue groups.

* ``start()`` returns at once; a supervisor connects with jittered backoff (1 s -> 30 s)
  and keeps trying forever. nats-py's own reconnect loop is given the same backoff
  through ``reconnect_to_server_handler`` and ``max_reconnect_attempts=-1``.
* ``request()`` turns every transport failure (no connection, no responders, timeout,
  open breaker) into :class:`Unavailable`; error replies become their ChatError.
* ``serve()`` subscribes a handler in the service's queue group: decode -> call -> encode,
  with ChatError mapped to an error reply and anything else to ``internal`` (logged).
* W3C trace context travels in message headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry import trace

from libs.bus import schemas, subjects
from libs.bus.subjects import metric_label
from libs.errors import ChatError, Internal, Invalid, Unavailable, from_dict
from libs.observability import metrics, tracing
from libs.observability.tracing import extract_context, inject_headers
from libs.resilience.backoff import Backoff
from libs.resilience.breaker import CircuitBreaker

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

S = TypeVar("S")
Handler = Callable[[Any], Awaitable[Any]]

_reply_decoder = msgspec.json.Decoder(schemas.Reply)
DEADLINE_HEADER = "Chat-Deadline"  # epoch milliseconds after which the requester stops waiting


class BusUnavailable(Unavailable):
    """The NATS connection itself failed (counts against the ``nats`` breaker)."""


class ServiceUnavailable(Unavailable):
    """The bus worked but the service did not answer (counts against that service's breaker)."""


def _bus_failure(exc: BaseException) -> bool:
    return isinstance(exc, BusUnavailable)


def _service_failure(exc: BaseException) -> bool:
    return isinstance(exc, ServiceUnavailable)


class Bus:
    def __init__(
        self,
        servers: str,
        *,
        name: str,
        request_timeout: float = 3.0,
        backoff: Backoff | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.servers = [s.strip() for s in servers.split(",") if s.strip()]
        self.name = name
        self.request_timeout = request_timeout
        self.backoff = backoff or Backoff()
        self.breaker = breaker or CircuitBreaker("nats")
        self.nc: NATS | None = None
        self._subs: list[tuple[str, str | None, Callable[[Msg], Awaitable[None]]]] = []
        self._active_subs: list[Any] = []
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.state = "connecting"
        self.last_change = time.time()
        self.reconnects = 0
        self._decoders: dict[type, msgspec.json.Decoder[Any]] = {}
        self._service_breakers: dict[str, CircuitBreaker] = {}
        self._service_probers: list[asyncio.Task[None]] = []
        metrics.DEPENDENCY_UP.labels("nats").set(0)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name="bus-connect")
        self._prober = self.breaker.start_prober(self._probe, Backoff(
            initial=self.backoff.initial, maximum=self.backoff.maximum, factor=self.backoff.factor))

    async def _probe(self) -> bool:
        """A round trip to the NATS server."""
        if self.nc is None or not self.nc.is_connected:
            return False
        await self.nc.flush(timeout=2)
        return True

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
            return True
        except TimeoutError:
            return False

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def close(self) -> None:
        self._closing = True
        if getattr(self, "_prober", None) is not None:
            self._prober.cancel()
        for prober in self._service_probers:
            prober.cancel()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 5)
            except Exception:
                log.warning("bus drain did not finish; closing")
                try:
                    await self.nc.close()
                except Exception:
                    pass

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.last_change = time.time()
        metrics.DEPENDENCY_UP.labels("nats").set(1 if state == "up" else 0)

    def _reconnect_handler(self, servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
        delay = self.backoff.next_delay()
        if self.backoff.down:
            self._set_state("down")
        server = min(servers, key=lambda s: s.reconnects) if servers else None
        log.info("nats: reconnecting in %.1fs (attempt %d)", delay, self.backoff.attempts)
        return server, delay

    async def _connect_forever(self) -> None:
        while not self._closing:
            nc = NATS()
            try:
                await nc.connect(
                    servers=self.servers,
                    name=self.name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_to_server_handler=self._reconnect_handler,
                    ping_interval=5,
                    max_outstanding_pings=2,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                    closed_cb=self._on_closed,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self.backoff.next_delay()
                if self.backoff.down:
                    self._set_state("down")
                metrics.DEPENDENCY_ERRORS.labels("nats").inc()
                log.warning("nats: connect failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                try:
                    await nc.close()
                except Exception:
                    pass
                await asyncio.sleep(delay)
                continue
            self.nc = nc
            self.backoff.reset()
            self._set_state("up")
            for subject, queue, cb in self._subs:
                self._active_subs.append(await nc.subscribe(subject, queue=queue or "", cb=cb))
            self._connected.set()
            log.info("nats: connected to %s", nc.connected_url.netloc if nc.connected_url else "?")
            return

    async def _on_disconnected(self) -> None:
        if not self._closing:
            self._set_state("reconnecting")
            log.warning("nats: disconnected")

    async def _on_reconnected(self) -> None:
        self.backoff.reset()
        self.breaker.half_open()
        self.reconnects += 1
        metrics.DEPENDENCY_RECONNECTS.labels("nats").inc()
        self._set_state("up")
        log.info("nats: reconnected")

    async def _on_error(self, exc: Exception) -> None:
        metrics.DEPENDENCY_ERRORS.labels("nats").inc()
        log.debug("nats: error %s", exc)

    async def _on_closed(self) -> None:
        if not self._closing:
            log.error("nats: connection closed unexpectedly; reconnecting")
            self._set_state("down")
            self._connected.clear()
            self._active_subs.clear()
            self._task = asyncio.create_task(self._connect_forever(), name="bus-connect")

    # -- request/reply -----------------------------------------------------------------
    def _service_breaker(self, subject: str) -> CircuitBreaker:
        """One breaker per service called (bulkheads): a service that stops answering is cut
        off on its own, while requests to the others go on. While open, the service's
        ``ping`` is probed on the backoff schedule; the first answer half-opens it.

        Requests go only to ``chat.svc.<service>.<op>``: a breaker is one service's, and its
        prober pings that service."""
        parts = subject.split(".", 3)
        if len(parts) != 4 or parts[:2] != ["chat", "svc"]:
            raise ValueError(f"not a service request subject: {subject!r}")
        service = parts[2]
        br = self._service_breakers.get(service)
        if br is None:
            b = self.breaker
            br = self._service_breakers[service] = CircuitBreaker(
                f"service:{service}", failures=b.failure_threshold, open_s=b.open_s,
                half_open_probes=b.half_open_probes, close_after=b.close_after)
            self._service_probers.append(br.start_prober(
                lambda: self._ping(service), Backoff(initial=self.backoff.initial, maximum=self.backoff.maximum,
                                                     factor=self.backoff.factor)))
        return br

    async def _ping(self, service: str) -> bool:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return False
        await nc.request(subjects.service_request(service, subjects.ServiceOps.PING), b"{}", timeout=2)
        return True

    def _decoder(self, typ: type[S]) -> msgspec.json.Decoder[S]:
        dec = self._decoders.get(typ)
        if dec is None:
            dec = self._decoders[typ] = msgspec.json.Decoder(typ)
        return dec

    async def request(self, subject: str, payload: Any, reply_type: type[S],
                      timeout: float | None = None) -> S:
        label = metric_label(subject)
        started = time.perf_counter()
        outcome = "ok"
        # A refusal or an unavailable service is an outcome, not a crash: it sets the span's
        # status and code, without the traceback a recorded exception would format.
        with tracing.span(_tracer, f"bus.request {label}", kind=trace.SpanKind.CLIENT,
                          record_exception=False, set_status_on_exception=False) as span:
            try:
                nc = self.nc
                if nc is None or not nc.is_connected:
                    raise Unavailable("message bus unavailable")
                service_breaker = self._service_breaker(subject)
                async with self.breaker.guard(counts=_bus_failure), service_breaker.guard(counts=_service_failure):
                    wait = timeout or self.request_timeout
                    headers = inject_headers({DEADLINE_HEADER: str(int((time.time() + wait) * 1000))})
                    try:
                        msg = await nc.request(subject, schemas.dumps(payload), timeout=wait, headers=headers)
                    except (TimeoutError, nats.errors.TimeoutError):
                        raise ServiceUnavailable("service did not answer in time") from None
                    except nats.errors.NoRespondersError:
                        raise ServiceUnavailable("no service instance is available") from None
                    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                            nats.errors.OutboundBufferLimitError, nats.errors.StaleConnectionError):
                        raise BusUnavailable("message bus unavailable") from None
                reply = _reply_decoder.decode(msg.data)
                if not reply.ok:
                    body = msgspec.to_builtins(reply.error) if reply.error else {"code": "internal"}
                    raise from_dict({k: v for k, v in body.items() if v is not None})
                return self._decoder(reply_type).decode(reply.data if reply.data != b"null" else b"{}")
            except ChatError as exc:
                outcome = exc.code
                span.set_attribute("chat.error_code", exc.code)
                span.set_status(trace.Status(trace.StatusCode.ERROR, exc.code))
                raise
            except msgspec.DecodeError:
                outcome = "internal"
                span.set_status(trace.Status(trace.StatusCode.ERROR, "internal"))
                log.exception("bus: undecodable reply on %s", label)
                raise Internal("undecodable reply") from None
            except BaseException as exc:
                outcome = "internal"
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                metrics.BUS_REQUESTS.labels(label, outcome).inc()
                metrics.BUS_REQUEST_SECONDS.labels(label).observe(time.perf_counter() - started)

    async def publish(self, subject: str, payload: Any) -> None:
        nc = self.nc
        if nc is None or not nc.is_connected:
            raise Unavailable("message bus unavailable")
        await nc.publish(subject, schemas.dumps(payload), headers=inject_headers() or None)

    # -- serving -----------------------------------------------------------------------
    async def serve(self, subject: str, handler: Handler, request_type: type,
                    queue: str | None = None, max_concurrency: int = 64) -> None:
        """Answer requests on ``subject`` with ``handler(request) -> reply struct``.

        Requests are handled concurrently (at most ``max_concurrency`` at once; beyond that
        they wait in NATS). A request whose caller has already given up (its deadline
        header has passed) is dropped unanswered instead of doing work nobody waits for.
        """
        decoder: msgspec.json.Decoder[Any] = self._decoder(request_type)
        label = metric_label(subject)
        slots = asyncio.Semaphore(max_concurrency)
        running: set[asyncio.Task[None]] = set()

        async def on_msg(msg: Msg) -> None:
            await slots.acquire()
            task = asyncio.create_task(handle(msg))
            running.add(task)
            task.add_done_callback(finished)

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            slots.release()

        async def handle(msg: Msg) -> None:
            deadline = (msg.headers or {}).get(DEADLINE_HEADER)
            if deadline is not None and deadline.isdigit() and int(deadline) < time.time() * 1000:
                metrics.BUS_HANDLED.labels(label, "expired").inc()
                return
            started = time.perf_counter()
            outcome = "ok"
            ctx = extract_context(msg.headers)
            with tracing.span(_tracer, f"bus.handle {label}", context=ctx, kind=trace.SpanKind.SERVER) as span:
                try:
                    try:
                        req = decoder.decode(msg.data)
                    except msgspec.ValidationError as exc:
                        raise Invalid(str(exc)) from None
                    result = await handler(req)
                    data = schemas.dumps(result if result is not None else schemas.Empty())
                    body = b'{"ok":true,"data":' + data + b"}"
                except ChatError as exc:
                    outcome = exc.code
                    span.set_attribute("chat.error_code", exc.code)
                    body = schemas.dumps({"ok": False, "error": exc.to_dict()})
                except asyncio.CancelledError:
                    raise
                except Exception:
                    outcome = "internal"
                    log.exception("bus: handler for %s failed", label)
                    body = schemas.dumps({"ok": False, "error": {"code": "internal", "message": "internal error"}})
                metrics.BUS_HANDLED.labels(label, outcome).inc()
                metrics.BUS_HANDLE_SECONDS.labels(label).observe(time.perf_counter() - started)
                if msg.reply:
                    try:
                        # Not msg.respond(): it sends the request's headers back with the
                        # reply, for the caller to parse for nothing.
                        nc = self.nc
                        if nc is None:
                            raise BusUnavailable("message bus closed")
                        await nc.publish(msg.reply, body)
                    except Exception as exc:
                        log.warning("bus: could not reply on %s: %s", label, exc)

        await self.subscribe(subject, on_msg, queue=queue)

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]],
                        queue: str | None = None) -> None:
        """Subscribe now if connected, and on every (re)connect from then on."""
        self._subs.append((subject, queue, cb))
        if self.nc is not None and self.nc.is_connected:
            self._active_subs.append(await self.nc.subscribe(subject, queue=queue or "", cb=cb))

    async def unsubscribe_all(self) -> None:
        """Stop taking new requests (draining): other replicas get them."""
        self._subs.clear()
        for sub in self._active_subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._active_subs.clear()

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "breaker": self.breaker.state,
            "reconnects": self.reconnects,
            "last_change": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_change)),
        }
