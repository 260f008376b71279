"""Frames and JSON of the gateway's Engine.IO layer (libs.sio.fast_transport)."""

from __future__ import annotations

import asyncio
import json

import engineio
import pytest
import socketio.packet
from engineio import packet

from libs.sio.fast_transport import FastJson, FastPacket, FastSocket, packet_frame, ws_frame

TEXT, BINARY = 1, 2


def read_frames(data: bytes) -> list[tuple[int, object]]:
    """Decode unmasked server frames per RFC 6455 section 5.2."""
    out: list[tuple[int, object]] = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b0 & 0x80, "FIN set"
        assert not b1 & 0x80, "server frames are not masked"
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        payload, i = data[i:i + n], i + n
        assert len(payload) == n
        op = b0 & 0x0F
        out.append((op, payload.decode() if op == TEXT else payload))
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_frames_of_every_length_class_parse(size):
    payload = ("é" * (size // 2) + "x" * (size % 2)).encode()
    frames = read_frames(ws_frame(payload))
    assert frames == [(TEXT, payload.decode())]


def test_binary_frame_and_packet_frame():
    assert read_frames(ws_frame(b"\x00\x01\xff", binary=True)) == [(BINARY, b"\x00\x01\xff")]
    pkt = packet.Packet(packet.MESSAGE, '2["message:created",{"seq":1}]')
    assert read_frames(packet_frame(pkt)) == [(TEXT, '42["message:created",{"seq":1}]')]
    assert read_frames(packet_frame(packet.Packet(packet.PING))) == [(TEXT, "2")]


def test_back_to_back_frames_stay_separate():
    data = ws_frame(b"a") + ws_frame(b"b" * 300) + ws_frame(b"c")
    assert [d for _, d in read_frames(data)] == ["a", "b" * 300, "c"]


def test_fast_json_matches_the_standard_library():
    doc = {"a": [1, 2.5, None, True], "s": "é\u2028<>", "n": {"x": -1}}
    assert json.loads(FastJson.dumps(doc, separators=(",", ":"))) == doc
    assert FastJson.loads('{"a":[1,2]}') == {"a": [1, 2]}


def test_fast_json_falls_back_for_what_orjson_refuses():
    lone = "\ud800x"
    assert json.loads(FastJson.dumps(["e", lone])) == ["e", lone]  # orjson refuses lone surrogates
    assert FastJson.loads('["\\ud800"]') == ["\ud800"]
    # integers beyond 64 bits arrive as floats, which the event schemas refuse as invalid
    assert FastJson.loads("[18446744073709551616]") == [float(18446744073709551616)]
    with pytest.raises(ValueError):
        FastJson.loads("{not json")


@pytest.mark.parametrize("data,binary", [
    (["ready", {"guilds": [{"id": "g", "channels": [1, 2.5, None, True]}]}], False),
    (["e", "\ud800"], False),  # orjson refuses it, the walk finds no bytes
    (["e", {"a": [b"\x00"]}], True),
    (["e", bytearray(b"x")], True),
])
def test_fast_packet_binary_check_agrees_with_python_socketio(data, binary):
    assert FastPacket.data_is_binary(data) is binary
    assert socketio.packet.Packet.data_is_binary(data) is binary
    kind = socketio.packet.BINARY_EVENT if binary else socketio.packet.EVENT
    assert FastPacket(socketio.packet.EVENT, data=data).packet_type == kind


async def test_a_packet_cancelled_from_elsewhere_does_not_lose_what_follows_it():
    """A socket's packets are handled in order by one task. When another task's cancellation
    ends one packet's handling (a future it awaited was cancelled), the packets after it are
    still handled, and the close among them still closes the socket."""
    server = engineio.AsyncServer(async_mode="aiohttp")
    cut = asyncio.get_running_loop().create_future()
    handled: list[str] = []
    closed = asyncio.Event()

    async def on_message(sid: str, data: str) -> None:
        handled.append(data)
        if data == "first":
            await cut

    async def on_disconnect(sid: str, reason: object) -> None:
        closed.set()

    server.on("message", on_message)
    server.on("disconnect", on_disconnect)
    sock = FastSocket(server, "s1")
    sock.receive_nowait(packet.Packet(packet.MESSAGE, "first"))
    sock.receive_nowait(packet.Packet(packet.MESSAGE, "second"))
    sock.closed_by_peer(server.reason.TRANSPORT_CLOSE)
    await asyncio.sleep(0.01)
    assert handled == ["first"]  # the others wait for it
    cut.cancel()
    await asyncio.wait_for(closed.wait(), 5)
    assert handled == ["first", "second"] and sock.closed
