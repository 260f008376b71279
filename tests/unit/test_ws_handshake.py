"""The WebSocket front's pure parts: the handshake key, unmasking, the request head."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from libs.sio.ws_server import accept_key, parse_head, unmask


def test_accept_key_is_rfc6455s_example():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_unmask_is_bytewise_xor_with_the_mask(payload: bytes, mask: bytes):
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert unmask(masked, mask) == payload
    assert unmask(unmask(payload, mask), mask) == payload


def test_unmask_keeps_leading_zero_bytes():
    mask = os.urandom(4)
    payload = b"\x00\x00\x00abc"
    assert unmask(unmask(payload, mask), mask) == payload


def test_parse_head_reads_method_path_query_and_headers():
    head = (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
            b"X-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\nSec-WebSocket-Key:  abc \r\n")
    method, path, query, headers = parse_head(head.rstrip(b"\r\n"))  # type: ignore[misc]
    assert (method, path, query) == ("GET", "/socket.io/", "EIO=4&transport=websocket")
    assert headers["HTTP_UPGRADE"] == "websocket"
    assert headers["HTTP_X_FORWARDED_FOR"] == "1.2.3.4,5.6.7.8"  # repeated headers joined, as WSGI does
    assert headers["HTTP_SEC_WEBSOCKET_KEY"] == "abc"


def test_parse_head_leaves_anything_unusual_to_aiohttp():
    assert parse_head(b"GET / HTTP/1.0\r\nHost: a") is None  # not HTTP/1.1
    assert parse_head(b"GET  / HTTP/1.1\r\nHost: a") is None  # not three parts
    assert parse_head(b"GET / HTTP/1.1\r\nno colon here") is None
    assert parse_head(b"GET / HTTP/1.1\r\n Host: a") is None  # obsolete line folding
    assert parse_head(b"GET / HTTP/1.1\r\nHost : a") is None  # space before the colon
