"""A wire-level fuzzer of the gateway's Engine.IO v4 / Socket.IO v5 endpoint.

It speaks the protocol by hand (an aiohttp websocket client and an HTTP long-polling
client) so it can send what no well-behaved client library would: truncated frames,
unknown packet types, foreign namespaces, odd CONNECT auth, stray ACKs, broken
BINARY_EVENTs, huge numbers, deep nesting, invalid UTF-8, oversized frames, bogus
polling payloads, unknown sids and so on.

The property checked for every input: the server answers it (a Socket.IO packet or an
Engine.IO packet / HTTP status), or closes that connection, or - where the protocol lets
it ignore the input - the session is still usable afterwards: a follow-up
``sync`` event with an ack is answered ``[{"ok": true, "channels": {}}]``. A session left
open but unusable, a missing answer, an HTTP 5xx or an ``internal`` error code is a
failure. Inputs are generated from ``random.Random(f"{seed}:{index}")``, so any single
input can be rebuilt with :func:`make_input` and replayed with :func:`replay`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode

import aiohttp

log = logging.getLogger(__name__)

Frame = str | bytes
Transport = Literal["ws", "polling", "http"]
Expect = Literal["answer", "close", "end", "any"]

EIO_PATH = "/socket.io/"
MAX_FRAME = 65536
ANSWER_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 3.0
HANDSHAKE_TIMEOUT_S = 10.0
PROBE_ID = 9000
PROBE_EVENT = '["sync",{"channels":{}}]'
PROBE_REPLY = [{"ok": True, "channels": {}}]
ERROR_CODES = {"invalid", "unauthorized", "forbidden", "not_found", "rate_limited", "conflict",
               "unavailable", "internal", "banned"}


# -- inputs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpCall:
    method: str
    query: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FuzzInput:
    """One input: frames sent on a fresh session (or one bare HTTP call)."""

    index: int
    kind: str
    transport: Transport
    auth: bool
    frames: tuple[Frame, ...] = ()
    expect: Expect = "any"
    ack_ids: tuple[int, ...] = ()  # ACKs to "/" that must come back (unless closed)
    replies: tuple[str, ...] = ()  # packet prefixes that must come back (unless closed)
    probes: int = 1  # frames a pending BINARY_EVENT may swallow, plus one
    reconnect: bool = False  # the input may leave "/" disconnected: CONNECT again before probing
    raw_body: bytes | None = None  # polling: POST these bytes verbatim instead of the frames
    http: HttpCall | None = None
    unknown_sid_ws: bool = False

    def describe(self) -> str:
        shown = [f[:160] if isinstance(f, str) else f[:64] for f in self.frames]
        extra = f" body={self.raw_body[:160]!r}" if self.raw_body is not None else ""
        extra += f" http={self.http}" if self.http is not None else ""
        return (f"#{self.index} {self.kind} via {self.transport} auth={self.auth} "
                f"expect={self.expect} frames={shown!r}{extra}")


# -- report -----------------------------------------------------------------------------------
@dataclass
class FuzzReport:
    sent: int = 0
    answered: int = 0
    closed: int = 0
    still_usable: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    inputs_by_kind: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # notable but allowed server behaviour
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors_by_kind

    def merge(self, other: FuzzReport) -> FuzzReport:
        out = FuzzReport(self.sent + other.sent, self.answered + other.answered,
                         self.closed + other.closed, self.still_usable + other.still_usable,
                         self.errors_by_kind + other.errors_by_kind,
                         self.inputs_by_kind + other.inputs_by_kind,
                         self.failures + other.failures, self.findings + other.findings,
                         max(self.elapsed_s, other.elapsed_s))
        return out

    def summary(self) -> str:
        return (f"sent={self.sent} answered={self.answered} closed={self.closed} "
                f"still_usable={self.still_usable} errors={dict(self.errors_by_kind)} "
                f"elapsed={self.elapsed_s:.1f}s")


@dataclass
class Outcome:
    """What one input did."""

    answered: bool = False
    closed: bool = False
    usable: bool = False
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- connections ------------------------------------------------------------------------------
class Closed(Exception):
    """The server closed the connection."""


class WireConn:
    """A hand-written Engine.IO client connection (base class)."""

    closed = False

    async def send(self, frames: Sequence[Frame]) -> None:
        raise NotImplementedError

    async def send_raw(self, body: bytes) -> None:
        raise NotImplementedError

    async def recv(self, timeout: float) -> Frame:
        """The next non-ping frame; raises Closed or asyncio.TimeoutError."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class WsConn(WireConn):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, base_url: str, sid: str | None = None) -> WsConn:
        query = {"EIO": "4", "transport": "websocket", **({"sid": sid} if sid else {})}
        ws = await http.ws_connect(f"{base_url}{EIO_PATH}?{urlencode(query)}", max_msg_size=0,
                                   autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
        return cls(ws)

    async def send(self, frames: Sequence[Frame]) -> None:
        try:
            for f in frames:
                if isinstance(f, bytes):
                    await self.ws.send_bytes(f)
                else:
                    await self.ws.send_str(f)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            self.closed = True
            raise Closed() from None

    async def send_raw(self, body: bytes) -> None:
        await self.send([body])

    async def recv(self, timeout: float) -> Frame:
        deadline = time.monotonic() + timeout
        while True:
            if self.closed:
                raise Closed()
            msg = await asyncio.wait_for(self.ws.receive(), max(0.0, deadline - time.monotonic()))
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "2":
                    await self.send(["3"])
                    continue
                if msg.data == "1":  # Engine.IO CLOSE: the session is over
                    self.closed = True
                    raise Closed()
                return str(msg.data)
            if msg.type == aiohttp.WSMsgType.BINARY:
                return bytes(msg.data)
            self.closed = True
            raise Closed()

    async def close(self) -> None:
        self.closed = True
        try:
            await asyncio.wait_for(self.ws.close(), 3.0)
        except (TimeoutError, ConnectionError, aiohttp.ClientError):
            pass


class PollConn(WireConn):
    """Engine.IO long-polling: one background GET loop feeds a queue; POSTs send."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, sid: str) -> None:
        self.http = http
        self.url = f"{base_url}{EIO_PATH}?{urlencode({'EIO': '4', 'transport': 'polling', 'sid': sid})}"
        self.sid = sid
        self.queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.poller: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, base_url: str) -> tuple[PollConn, str]:
        url = f"{base_url}{EIO_PATH}?EIO=4&transport=polling"
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=HANDSHAKE_TIMEOUT_S)) as r:
            text = await r.text()
        if r.status != 200 or not text.startswith("0"):
            raise RuntimeError(f"polling handshake: {r.status} {text[:100]!r}")
        conn = cls(http, base_url, json.loads(text[1:])["sid"])
        conn.poller = asyncio.create_task(conn._poll_forever())
        return conn, text

    async def _poll_forever(self) -> None:
        try:
            while True:
                async with self.http.get(self.url, timeout=aiohttp.ClientTimeout(total=60)) as r:
                    body = await r.read()
                if r.status != 200:
                    break
                for pkt in body.decode("utf-8", "replace").split("\x1e"):
                    await self._deliver(pkt)
                    if pkt == "1":
                        return
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.queue.put_nowait(None)

    async def _deliver(self, pkt: str) -> None:
        if pkt == "2":
            await self.send(["3"])
        elif pkt.startswith("b"):
            self.queue.put_nowait(base64.b64decode(pkt[1:]))
        elif pkt:
            self.queue.put_nowait(pkt)

    async def send(self, frames: Sequence[Frame]) -> None:
        parts = ["b" + base64.b64encode(f).decode() if isinstance(f, bytes) else f for f in frames]
        await self.send_raw("\x1e".join(parts).encode("utf-8", "surrogatepass"))

    async def send_raw(self, body: bytes) -> None:
        try:
            async with self.http.post(self.url, data=body, timeout=aiohttp.ClientTimeout(total=10),
                                      headers={"Content-Type": "text/plain;charset=UTF-8"}) as r:
                await r.read()
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            self.closed = True
            raise Closed() from None
        if r.status >= 500:
            raise HttpError(r.status)
        if r.status != 200:
            self.closed = True
            raise Closed()

    async def recv(self, timeout: float) -> Frame:
        if self.closed and self.queue.empty():
            raise Closed()
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if item is None or item == "1":
            self.closed = True
            raise Closed()
        return item

    async def close(self) -> None:
        if not self.closed:
            try:
                await self.send_raw(b"1")
            except (Closed, HttpError):
                pass
        self.closed = True
        if self.poller is not None:
            self.poller.cancel()
            await asyncio.gather(self.poller, return_exceptions=True)


class HttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


# -- server packets ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SioPacket:
    type: int
    namespace: str
    id: int | None
    data: object


def parse_sio(frame: Frame) -> SioPacket | None:
    """A server Engine.IO MESSAGE carrying a Socket.IO packet, decoded; None otherwise."""
    if not isinstance(frame, str) or not frame.startswith("4") or len(frame) < 2:
        return None
    rest = frame[2:]
    namespace = "/"
    if rest.startswith("/"):
        ns, _, rest = rest.partition(",")
        namespace = ns
    digits = len(rest) - len(rest.lstrip("0123456789"))
    pid = int(rest[:digits]) if digits else None
    rest = rest[digits:]
    try:
        data = json.loads(rest) if rest else None
    except ValueError:
        data = rest
    return SioPacket(int(frame[1]) if frame[1].isdigit() else -1, namespace, pid, data)


def internal_in(pkt: SioPacket) -> bool:
    """Does an ACK / CONNECT_ERROR carry the ``internal`` error code?"""
    text = json.dumps(pkt.data, default=str)
    return '"internal"' in text


def ack_is_contract(data: object) -> bool:
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        return False
    ack = data[0]
    if ack.get("ok") is True:
        return True
    err = ack.get("error")
    return (ack.get("ok") is False and isinstance(err, dict) and err.get("code") in ERROR_CODES
            and isinstance(err.get("message"), str))


# -- generators -------------------------------------------------------------------------------
EVENTS = ["sync", "message:send", "channel:join", "typing:start", "presence:update", "voice:leave",
          "dm:send", "no:such-event", "", "x" * 100]


def _json_value(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(9 if depth < 3 else 5)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 2**31, 2**63, 2**64 + 1, 2**100, -(2**100), 10**99])
    if pick == 3:
        return rng.choice([0.5, -0.0, 1e308, 1e-320])
    if pick == 4:
        return "".join(rng.choice("ab\u00e9\u2603\U0001f600\\\"'\x00\n") for _ in range(rng.randrange(20)))
    if pick in (5, 6):
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["channel_id", "content", "nonce", "channels", "_placeholder", "num", "token", ""]
    return {rng.choice(keys): _json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _event(rng: random.Random) -> str:
    return rng.choice(EVENTS)


def _valid_event_frame(rng: random.Random, ack_id: int) -> str:
    return f"42{ack_id}{_dumps([_event(rng), _json_value(rng)])}"


Gen = Callable[[random.Random, int, str], FuzzInput]


def gen_valid(rng: random.Random, i: int, token: str) -> FuzzInput:
    ack = rng.randrange(1, 1000)
    return FuzzInput(i, "valid", _ws_or_poll(rng), True, (_valid_event_frame(rng, ack),),
                     "answer", ack_ids=(ack,))


def gen_truncated(rng: random.Random, i: int, token: str) -> FuzzInput:
    source = rng.choice([
        f'40{_dumps({"token": token})}', f"421{PROBE_EVENT}", '451-["sync",{"_placeholder":true,"num":0}]',
        '0{"sid":"x"}', "2probe", f"42/admin,7{PROBE_EVENT}", _valid_event_frame(rng, 3)])
    cut = rng.randrange(0, len(source))
    return FuzzInput(i, "truncated", _ws_or_poll(rng), rng.random() < 0.7, (source[:cut],),
                     reconnect=source[:cut].startswith("41"))


def gen_bad_type(rng: random.Random, i: int, token: str) -> FuzzInput:
    frame = rng.choice([
        f"{rng.choice('789')}{PROBE_EVENT}", f"4{rng.choice('789')}{PROBE_EVENT}", "x", "-1", " 4",
        f"4{rng.choice('abz-+ /')}{PROBE_EVENT}", "\u0664\u0662", "4\u0662", "44{}", '44"no"',
        f"4{rng.randrange(10, 99)}", "b!!notbase64", "b", "4" * rng.randrange(2, 50)])
    return FuzzInput(i, "bad_type", _ws_or_poll(rng), rng.random() < 0.7, (frame,),
                     reconnect=frame.startswith("41"))


NAMESPACES = ["/admin", "/../", "/..", "//", "/\u2603", "/a b", "/ns?x=1", "/ ", "/\x00", "/%2e%2e",
              "/socket.io", "/" + "a" * 2000]


def _namespace(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return "/" + "n" * rng.randrange(5000, 60000)
    return rng.choice(NAMESPACES)


def gen_namespace(rng: random.Random, i: int, token: str) -> FuzzInput:
    ns = _namespace(rng)
    mode = rng.randrange(3)
    if mode == 0:  # CONNECT to a namespace that does not exist: CONNECT_ERROR expected
        frame = f"40{ns},{_dumps({'token': token})}"
        return FuzzInput(i, "namespace_connect", _ws_or_poll(rng), rng.random() < 0.5, (frame,),
                         "answer", replies=("44",))
    if mode == 1:  # EVENT to it: not connected there, so it may be ignored
        return FuzzInput(i, "namespace_event", _ws_or_poll(rng), True, (f"42{ns},5{PROBE_EVENT}",))
    return FuzzInput(i, "namespace_disconnect", _ws_or_poll(rng), True, (f"41{ns},",))


def _nested_dict(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def gen_connect_auth(rng: random.Random, i: int, token: str) -> FuzzInput:
    shallow = rng.choice([
        '"string"', "123", "[]", "null", "true", "false", "0", '""', "{}", '{"token":5}', '{"token":null}',
        '{"token":{"a":[1,2]}}', '{"token":["x"]}', f'{{"token":"{token[:-3]}xyz"}}',
        f'{{"token":"{token}","extra":{_dumps(_json_value(rng))}}}', '{"token":"' + "x" * 60000 + '"}',
        '{"token":"a.b.c"}', '{"token":"' + "\\ud800" + '"}', "[1e309]", '{"token":' + str(2**100) + "}",
        _dumps({"k" + str(n): n for n in range(2000)}), _nested_dict(300)])
    deep = rng.choice([_nested_dict(5000), "[" * 20000 + "]" * 20000, "{", '{"token":', "{'token':1}"])
    use_deep = rng.random() < 0.25
    auth = deep if use_deep else shallow
    return FuzzInput(i, "connect_auth", _ws_or_poll(rng), False, (f"40{auth}",),
                     "any" if use_deep else "answer", replies=() if use_deep else ("40", "44"))


def gen_event_before_connect(rng: random.Random, i: int, token: str) -> FuzzInput:
    frames = tuple(_valid_event_frame(rng, rng.randrange(1, 50)) for _ in range(rng.randrange(1, 4)))
    return FuzzInput(i, "event_before_connect", _ws_or_poll(rng), False, frames)


def gen_stray_ack(rng: random.Random, i: int, token: str) -> FuzzInput:
    ack = rng.choice([0, 1, 7, 2**40, 10**98])
    data = rng.choice(["[]", _dumps([_json_value(rng)]), "", "{}", '"x"', "[" * 3000 + "]" * 3000])
    ns = rng.choice(["", "", "/admin,"])
    return FuzzInput(i, "stray_ack", _ws_or_poll(rng), rng.random() < 0.8, (f"43{ns}{ack}{data}",))


def gen_binary(rng: random.Random, i: int, token: str) -> FuzzInput:
    declared = rng.randrange(0, 4)
    provided = rng.randrange(0, 5)
    num: object = rng.choice([0, 0, 1, 999, -1, "0", None, 2**70])
    ptype = rng.choice(["5", "5", "6"])
    ack = rng.randrange(1, 100)
    holder = {"_placeholder": True, "num": num} if num is not None else {"_placeholder": True}
    header = f"4{ptype}{declared}-{ack}{_dumps([_event(rng), {'blob': holder, 'n': 1}])}"
    well_formed = ptype == "5" and declared == provided == 1 and num == 0
    if rng.random() < 0.15:
        header = f"4{ptype}{rng.choice(['', '-', 'x-', '00-', '99999999999-'])}{ack}{_dumps(['sync', holder])}"
        well_formed = False
    frames: tuple[Frame, ...] = (header, *(rng.randbytes(rng.randrange(0, 64)) for _ in range(provided)))
    pending = max(0, declared - provided)
    return FuzzInput(i, "binary", "ws", True, frames, "answer" if well_formed else "any",
                     ack_ids=(ack,) if well_formed else (), probes=pending + 1)


def gen_huge_numbers(rng: random.Random, i: int, token: str) -> FuzzInput:
    num = rng.choice(["1e309", "-1e309", str(2**100), str(-(2**100)), "1e-400", "NaN", "Infinity",
                      "-Infinity", "9" * 99, "9" * 101, "1" + "0" * 4000, "0.0000000000000000001",
                      "123456789012345678901234567890.5e300"])
    ack = rng.randrange(1, 100)
    send = f'["message:send",{{"channel_id":{num},"content":"x","nonce":{num}}}]'
    body = rng.choice([f'["sync",{{"channels":{{"1":{num}}}}}]', send, f'["typing:start",{num}]', f"[{num}]"])
    decodable = len(num) <= 100 or "e" in num or "." in num
    return FuzzInput(i, "huge_numbers", _ws_or_poll(rng), True, (f"42{ack}{body}",),
                     "answer" if decodable and not body.startswith(f"[{num}") else "any",
                     ack_ids=(ack,) if decodable and not body.startswith(f"[{num}") else ())


def gen_deep_nesting(rng: random.Random, i: int, token: str) -> FuzzInput:
    depth = rng.choice([50, 200, 900, 1500, 5000, 10000, 20000])
    ack = rng.randrange(1, 100)
    inner = rng.choice(["[" * depth + "]" * depth, _nested_dict(min(depth, 6000))])
    event = rng.choice(["sync", "message:send"])
    frame = rng.choice([f'42{ack}["{event}",{inner}]', f"42{ack}[{inner}]", "42" + "[" * depth])
    must = depth <= 200 and frame.startswith(f'42{ack}["')
    return FuzzInput(i, "deep_nesting", _ws_or_poll(rng), True, (frame,),
                     "answer" if must else "any", ack_ids=(ack,) if must else ())


def gen_not_array(rng: random.Random, i: int, token: str) -> FuzzInput:
    ack = rng.randrange(1, 100)
    body = rng.choice(['{"a":1}', '"sync"', "5", "null", "true", '{"0":"sync"}', "[]", "[[]]", "[{}]",
                       '[["sync"]]', '[{"e":"sync"}]', "[null]", "[1.5]", '["sync"', "[]]", "[,]",
                       "['sync']", '["connect"]', '["disconnect",{}]', '["__proto__"]', "\ufeff[1]"])
    return FuzzInput(i, "not_array", _ws_or_poll(rng), True, (f"42{ack}{body}",))


def gen_reserved_event(rng: random.Random, i: int, token: str) -> FuzzInput:
    """Client EVENTs named like the server's reserved handlers."""
    ack = rng.randrange(1, 100)
    body = rng.choice(['["disconnect"]', '["disconnect","client"]', '["connect"]',
                       f'["connect",{{"REMOTE_ADDR":"6.6.6.6"}},{{"token":"{token}"}}]',
                       '["connect",{},{"token":"nope"}]'])
    return FuzzInput(i, "reserved_event", _ws_or_poll(rng), True, (f"42{ack}{body}",))


SURROGATE_EVENTS = [
    '["message:send",{"channel_id":"1","content":"S","nonce":"n"}]',
    '["message:send",{"channel_id":"1","content":"x","nonce":"S"}]',
    '["presence:update",{"status":"online","activity":"S"}]',
    '["presence:update",{"status":"S"}]', '["sync",{"channels":{"S":1}}]',
    '["dm:send",{"recipient_id":"S","content":"x","nonce":"n"}]', '["S",{}]',
    '["typing:start",{"channel_id":"S"}]', '["channel:join",{"channel_id":"S"}]',
    '["voice:join",{"channel_id":"S"}]', '["mod:kick",{"guild_id":"1","user_id":"S","reason":"S"}]',
]


def gen_surrogate(rng: random.Random, i: int, token: str) -> FuzzInput:
    """Lone UTF-16 surrogates: valid JSON escapes, but no UTF-8 encoding exists for them."""
    ack = rng.randrange(1, 100)
    body = rng.choice(SURROGATE_EVENTS).replace("S", rng.choice(["\\ud800", "\\udfff", "a\\udc00b"]))
    return FuzzInput(i, "surrogate", _ws_or_poll(rng), True, (f"42{ack}{body}",), "answer", ack_ids=(ack,))


def gen_empty(rng: random.Random, i: int, token: str) -> FuzzInput:
    frame: Frame = rng.choice(["", b"", "4", "42", "40", "4\x1e", " "])  # type: ignore[assignment]
    return FuzzInput(i, "empty", "ws", rng.random() < 0.7, (frame,),
                     reconnect=frame == "40")


def gen_invalid_utf8(rng: random.Random, i: int, token: str) -> FuzzInput:
    blob = rng.choice([b"\xff\xfe\xfd", b"42[\"sync\",\xc3\x28]", b"\xed\xa0\x80", b"4\x80",
                       b"\xc0\xaf", rng.randbytes(rng.randrange(1, 200))])
    if rng.random() < 0.5:
        return FuzzInput(i, "invalid_utf8", "ws", rng.random() < 0.7, (blob,))
    return FuzzInput(i, "invalid_utf8_post", "polling", rng.random() < 0.7, raw_body=blob)


def gen_eio_order(rng: random.Random, i: int, token: str) -> FuzzInput:
    frames = tuple(rng.choice(["2", "3", "5", "6", "2probe", "3probe", "0", "0{}", "6x", "5probe", "3" * 10])
                   for _ in range(rng.randrange(1, 6)))
    closing = rng.random() < 0.1
    frames = frames + (("1",) if closing else ())
    return FuzzInput(i, "eio_order", _ws_or_poll(rng), rng.random() < 0.7, frames,
                     "end" if closing else "any")


def gen_polling_separators(rng: random.Random, i: int, token: str) -> FuzzInput:
    ev = f"421{PROBE_EVENT}"
    body = rng.choice([f"\x1e{ev}", f"{ev}\x1e", f"{ev}\x1e\x1e{ev}", "\x1e", "\x1e" * 10, f"3\x1e{ev}",
                       f"{ev}\x1e\x1e", f"d={ev}", "d=", "d=%ZZ", f"4\x1e{ev}\x1eb", f"b\x1e{ev}"])
    return FuzzInput(i, "polling_separators", "polling", True, raw_body=body.encode())


def gen_polling_many(rng: random.Random, i: int, token: str) -> FuzzInput:
    count = rng.choice([2, 8, 16, 17, 40, 200])
    ids = tuple(range(1, count + 1))
    frames = tuple(f"42{n}{PROBE_EVENT}" for n in ids)
    accepted = count <= 16
    return FuzzInput(i, "polling_many", "polling", True, frames, "answer" if accepted else "any",
                     ack_ids=ids if accepted else ())


def gen_oversized(rng: random.Random, i: int, token: str) -> FuzzInput:
    size = rng.choice([MAX_FRAME + 1, MAX_FRAME + 100, 2 * MAX_FRAME, 300_000])
    if rng.random() < 0.7:
        frame: Frame = f'421["sync",{{"channels":{{}},"pad":"{"x" * size}"}}]'
        if rng.random() < 0.3:
            frame = rng.randbytes(size)
        return FuzzInput(i, "oversized", "ws", rng.random() < 0.8, (frame,), "close")
    body = f'421["sync",{{"pad":"{"x" * size}"}}]'.encode()
    return FuzzInput(i, "oversized_post", "polling", True, raw_body=body)


def gen_unknown_sid(rng: random.Random, i: int, token: str) -> FuzzInput:
    sid = rng.choice(["AAAAAAAAAAAAAAAAAAAA", "", "../../etc", "x" * 5000, "\u2603", "0"])
    if rng.random() < 0.3 and sid:  # an empty sid is a new session (Engine.IO handshake), not an unknown one
        return FuzzInput(i, "unknown_sid_ws", "http", False, http=HttpCall("GET", {"EIO": "4", "sid": sid}),
                         unknown_sid_ws=True)
    method = rng.choice(["GET", "POST"])
    return FuzzInput(i, "unknown_sid", "http", False, expect="answer",
                     http=HttpCall(method, {"EIO": "4", "transport": "polling", "sid": sid}, b"40"))


def gen_bad_http(rng: random.Random, i: int, token: str) -> FuzzInput:
    call = rng.choice([
        HttpCall("GET", {"EIO": "3", "transport": "polling"}), HttpCall("GET", {"transport": "polling"}),
        HttpCall("GET", {"EIO": "4", "transport": "carrier-pigeon"}),
        HttpCall("GET", {"EIO": "4", "transport": "polling", "j": "abc"}),
        HttpCall("GET", {"EIO": "4", "transport": "websocket"}),
        HttpCall("PUT", {"EIO": "4", "transport": "polling"}), HttpCall("DELETE", {"EIO": "4"}),
        HttpCall("OPTIONS", {"EIO": "4", "transport": "polling"}),
        HttpCall("POST", {"EIO": "4", "transport": "polling"}, b"40"),
        HttpCall("GET", {"EIO": "4", "transport": "polling"}, headers={"Origin": "http://evil.example"}),
        HttpCall("GET", {"EIO": "4\x00", "transport": "polling"}),
    ])
    return FuzzInput(i, "bad_http", "http", False, expect="answer", http=call)


def gen_reconnect(rng: random.Random, i: int, token: str) -> FuzzInput:
    frame = rng.choice([f'40{_dumps({"token": token})}', "40", f"41{PROBE_EVENT}", "41"])
    expect: Expect = "answer" if frame.startswith("40") else "any"
    return FuzzInput(i, "reconnect", _ws_or_poll(rng), True, (frame,), expect,
                     replies=("44",) if frame.startswith("40") else (), reconnect=frame.startswith("41"))


def gen_ack_id_edge(rng: random.Random, i: int, token: str) -> FuzzInput:
    digits = rng.choice([1, 18, 19, 20, 50, 99, 100, 150])
    ack = int("9" * digits)
    frame = f"42{'9' * digits}{PROBE_EVENT}"
    must = digits < 100
    return FuzzInput(i, "ack_id_edge", _ws_or_poll(rng), True, (frame,), "answer" if must else "any",
                     ack_ids=(ack,) if must else ())


def gen_random_bytes(rng: random.Random, i: int, token: str) -> FuzzInput:
    n = rng.randrange(0, 300)
    if rng.random() < 0.5:
        text = "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(n))
        frame: Frame = rng.choice(["4", "42", "40", ""]) + text
    else:
        frame = rng.randbytes(n)
    return FuzzInput(i, "random", "ws", rng.random() < 0.7, (frame,),
                     reconnect=isinstance(frame, str) and frame.startswith("41"))


GENERATORS: list[tuple[Gen, int]] = [
    (gen_valid, 6), (gen_truncated, 8), (gen_bad_type, 6), (gen_namespace, 6), (gen_connect_auth, 8),
    (gen_event_before_connect, 4), (gen_stray_ack, 5), (gen_binary, 4), (gen_huge_numbers, 6),
    (gen_deep_nesting, 5), (gen_not_array, 6), (gen_reserved_event, 2), (gen_empty, 4),
    (gen_invalid_utf8, 4), (gen_eio_order, 5), (gen_polling_separators, 3), (gen_polling_many, 2),
    (gen_oversized, 2), (gen_unknown_sid, 3), (gen_bad_http, 3), (gen_reconnect, 3), (gen_ack_id_edge, 3),
    (gen_random_bytes, 6), (gen_surrogate, 3),
]


def _ws_or_poll(rng: random.Random) -> Transport:
    return "polling" if rng.random() < 0.2 else "ws"


def make_input(seed: int, index: int, token: str, kinds: Sequence[str] | None = None) -> FuzzInput:
    """The input number ``index`` of a run with ``seed`` (deterministic)."""
    rng = random.Random(f"{seed}:{index}")
    gens = [(g, w) for g, w in GENERATORS if kinds is None or g.__name__.removeprefix("gen_") in kinds]
    gen = rng.choices([g for g, _ in gens], weights=[w for _, w in gens])[0]
    return gen(rng, index, token)


# -- running one input ------------------------------------------------------------------------
class Session:
    """One fuzzed session: the connection and what the server has sent on it."""

    def __init__(self, conn: WireConn, connected: bool) -> None:
        self.conn = conn
        self.connected = connected
        self.acks: dict[int, object] = {}
        self.prefixes: list[str] = []
        self.others = 0
        self.outcome = Outcome()

    def absorb(self, frame: Frame) -> None:
        pkt = parse_sio(frame)
        if isinstance(frame, str):
            self.prefixes.append(frame[:2])
        if pkt is None:
            self.others += 1
            return
        if pkt.type == 3 and pkt.namespace == "/" and pkt.id is not None:
            self.acks[pkt.id] = pkt.data
        elif pkt.type == 0 and pkt.namespace == "/":
            self.connected = True
        elif pkt.type == 1 and pkt.namespace == "/":
            self.connected = False
        if pkt.type in (3, 4) and internal_in(pkt):
            self.outcome.errors.append("internal")
        if not (pkt.type == 2 and isinstance(pkt.data, list) and pkt.data[:1] == ["ready"]):
            self.others += 1

    async def read_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Absorb frames until ``done()``; False on timeout. Raises Closed."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.absorb(await self.conn.recv(left))
            except TimeoutError:
                return False
        return True


async def _open(http: aiohttp.ClientSession, base_url: str, transport: Transport) -> WireConn:
    if transport == "polling":
        conn, _ = await PollConn.open(http, base_url)
        return conn
    ws = await WsConn.open(http, base_url)
    first = await ws.recv(HANDSHAKE_TIMEOUT_S)
    if not isinstance(first, str) or not first.startswith("0{"):
        raise RuntimeError(f"websocket handshake: {first!r:.100}")
    return ws


async def _connect_ns(s: Session, token: str, timeout: float = HANDSHAKE_TIMEOUT_S) -> bool:
    seen = len(s.prefixes)
    await s.conn.send([f'40{_dumps({"token": token})}'])
    await s.read_until(lambda: any(p in ("40", "44") for p in s.prefixes[seen:]), timeout)
    return s.connected


async def _probe(s: Session, fi: FuzzInput, token: str) -> None:
    """A ``sync`` with an ack must be answered as usual (after a CONNECT if "/" may be gone)."""
    if fi.reconnect or not s.connected:
        await _connect_ns(s, token, PROBE_TIMEOUT_S)
    ids = [PROBE_ID + n for n in range(fi.probes)]
    await s.conn.send([f"42{pid}{PROBE_EVENT}" for pid in ids])
    if await s.read_until(lambda: any(pid in s.acks for pid in ids), PROBE_TIMEOUT_S):
        reply = next(s.acks[pid] for pid in ids if pid in s.acks)
        if reply == PROBE_REPLY:
            s.outcome.usable = True
        else:
            s.outcome.errors.append("probe_mismatch")
            s.outcome.notes.append(f"probe answered {reply!r:.300}")


def _answers_missing(s: Session, fi: FuzzInput) -> bool:
    acks = any(a not in s.acks for a in fi.ack_ids)
    replies = bool(fi.replies) and not any(p in fi.replies for p in s.prefixes)
    return acks or replies


async def _exercise(s: Session, fi: FuzzInput, token: str) -> None:
    if fi.raw_body is not None:
        await s.conn.send_raw(fi.raw_body)
    else:
        await s.conn.send(fi.frames)
    if fi.expect == "answer":
        await s.read_until(lambda: not _answers_missing(s, fi), ANSWER_TIMEOUT_S)
    elif fi.expect == "close":
        await s.read_until(lambda: False, ANSWER_TIMEOUT_S)
        s.outcome.errors.append("not_closed")
        return
    elif fi.expect == "end":
        await _expect_ended(s)
        return
    await _probe(s, fi, token)


async def _expect_ended(s: Session) -> None:
    """After an Engine.IO CLOSE from the client the session must be gone: closed, or at least
    no longer answering (the server may leave the transport for the client to close)."""
    await s.conn.send([f"42{PROBE_ID}{PROBE_EVENT}"])
    if await s.read_until(lambda: PROBE_ID in s.acks, 2.0):
        s.outcome.errors.append("alive_after_close")
        return
    s.outcome.closed = True
    s.outcome.notes.append("transport left open after the client's CLOSE packet")


def _judge(s: Session, fi: FuzzInput) -> None:
    o = s.outcome
    bad_acks = [a for i, a in s.acks.items() if i < PROBE_ID and not ack_is_contract(a)]
    if bad_acks and fi.kind not in ("reserved_event", "not_array"):
        o.errors.append("bad_ack")
        o.notes.append(f"ack {bad_acks[0]!r:.200}")
    elif bad_acks:
        o.notes.append(f"non-contract ack {bad_acks[0]!r:.200}")
    o.answered = s.others > 0 or any(i < PROBE_ID for i in s.acks)
    if o.closed or fi.expect == "end":
        return
    if fi.expect == "answer" and _answers_missing(s, fi):
        o.errors.append("no_answer")
    if not o.usable and "probe_mismatch" not in o.errors and "not_closed" not in o.errors:
        o.errors.append("unusable")


async def run_session_input(http: aiohttp.ClientSession, base_url: str, token: str, fi: FuzzInput) -> Outcome:
    conn = await _open(http, base_url, fi.transport)
    s = Session(conn, connected=False)
    try:
        if fi.auth and not await _connect_ns(s, token):
            s.outcome.errors.append("handshake")
            return s.outcome
        s.prefixes.clear()
        s.others = 0
        try:
            await _exercise(s, fi, token)
        except Closed:
            s.outcome.closed = True
        except HttpError as exc:
            s.outcome.errors.append("http_5xx")
            s.outcome.notes.append(str(exc))
        _judge(s, fi)
        return s.outcome
    except Closed:
        s.outcome.errors.append("handshake")
        return s.outcome
    finally:
        await conn.close()


async def run_http_input(http: aiohttp.ClientSession, base_url: str, fi: FuzzInput) -> Outcome:
    assert fi.http is not None
    out = Outcome()
    call = fi.http
    url = f"{base_url}{EIO_PATH}?{urlencode(call.query)}"
    if fi.unknown_sid_ws:
        try:
            ws = await http.ws_connect(url + "&transport=websocket", timeout=aiohttp.ClientWSTimeout(ws_close=2))
            await ws.close()
            out.errors.append("accepted_unknown_sid")
        except aiohttp.WSServerHandshakeError as exc:
            out.answered = exc.status < 500
            if exc.status >= 500:
                out.errors.append("http_5xx")
        return out
    async with http.request(call.method, url, data=call.body or None, headers=call.headers,
                            timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S)) as r:
        body = await r.read()
    out.answered = True
    if r.status >= 500:
        out.errors.append("http_5xx")
        out.notes.append(f"{r.status} {body[:200]!r}")
    if r.status == 200 and body.startswith(b"0{"):  # a session was opened: close it again
        sid = json.loads(body[1:])["sid"]
        await http.post(f"{base_url}{EIO_PATH}?EIO=4&transport=polling&sid={sid}", data=b"1")
    return out


async def replay(http: aiohttp.ClientSession, base_url: str, token: str, fi: FuzzInput) -> Outcome:
    """Run one input against ``base_url`` and judge it."""
    try:
        if fi.transport == "http":
            return await run_http_input(http, base_url, fi)
        return await run_session_input(http, base_url, token, fi)
    except (TimeoutError, aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
        return Outcome(errors=["client_error"], notes=[f"{type(exc).__name__}: {exc}"[:300]])


def _record(report: FuzzReport, fi: FuzzInput, out: Outcome) -> None:
    report.sent += 1
    report.inputs_by_kind[fi.kind] += 1
    report.answered += out.answered
    report.closed += out.closed
    report.still_usable += out.usable
    for e in dict.fromkeys(out.errors):
        report.errors_by_kind[e] += 1
    if out.errors and len(report.failures) < 200:
        report.failures.append(f"{fi.describe()} -> errors={out.errors} notes={out.notes}")
        log.warning("fuzz failure: %s", report.failures[-1])
    elif out.notes and len(report.findings) < 200:
        report.findings.append(f"{fi.describe()} -> {out.notes}")


async def run_fuzz(base_url: str, token: str, n: int, seed: int, concurrency: int,
                   kinds: Sequence[str] | None = None) -> FuzzReport:
    """Send ``n`` generated inputs to one gateway, ``concurrency`` sessions at a time."""
    report = FuzzReport()
    started = time.monotonic()
    next_index = iter(range(n))
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as http:
        async def worker() -> None:
            for index in next_index:
                fi = make_input(seed, index, token, kinds)
                _record(report, fi, await replay(http, base_url, token, fi))

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    report.elapsed_s = time.monotonic() - started
    log.info("wire fuzz of %s: %s", base_url, report.summary())
    return report


# -- the node's own view ----------------------------------------------------------------------
async def check_alive(ops_url: str, timeout: float = 2.0) -> bool:
    """``GET /livez`` on a process's ops port answers 200."""
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{ops_url}/livez", timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                return r.status == 200
    except (TimeoutError, aiohttp.ClientError, ConnectionError):
        return False


async def metric_total(ops_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in ``/metrics`` whose labels include ``labels``."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{ops_url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
            text = await r.text()
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            head, _, value = line.rpartition(" ")
            if all(w in head for w in wanted):
                total += float(value)
    return total


async def active_connections(ops_url: str) -> int:
    """The gateway's own count of connected sockets (``/metrics/socket``)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{ops_url}/metrics/socket", timeout=aiohttp.ClientTimeout(total=5)) as r:
            return int((await r.json())["active_connections"])
