"""Every client event is answered with one contract-shaped ack, whatever it carries,
and the gateway stays up (property-based, against a live gateway)."""

from __future__ import annotations

import json
import urllib.request
import uuid

import aiohttp
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from libs.testing.client import ChatClient, Recorder, guild_with_members
from libs.testing.fixtures import Stack

EVENTS = [
    "message:send", "message:edit", "message:delete", "dm:send", "channel:join", "channel:leave",
    "typing:start", "presence:update", "voice:join", "voice:update", "voice:leave", "mod:kick", "mod:ban",
    "mod:unban", "mod:timeout", "sync", "no:such-event", "", "x" * 200,
]
CODES = {"invalid", "unauthorized", "forbidden", "not_found", "rate_limited", "conflict", "unavailable", "internal"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=300),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=20), children, max_size=6),
    max_leaves=30,
)


def field_values(channel_id: str) -> st.SearchStrategy:
    return st.one_of(st.just(channel_id), st.just("1"), st.just("99999999999"), json_values,
                     st.text(min_size=1900, max_size=2100))


def payloads(channel_id: str) -> st.SearchStrategy:
    keys = st.sampled_from(["channel_id", "content", "nonce", "message_id", "recipient_id", "status",
                            "activity", "guild_id", "user_id", "duration_s", "channels", "self_mute",
                            "attachments", "mentions", "embeds", "reply_to", "reason"])
    structured = st.dictionaries(keys, field_values(channel_id), max_size=8)
    return st.one_of(structured, json_values)


def assert_contract_ack(ack: object) -> None:
    assert isinstance(ack, dict), ack
    if ack.get("ok") is True:
        return
    assert ack.get("ok") is False, ack
    err = ack["error"]
    assert err["code"] in CODES and isinstance(err["message"], str), ack
    assert err["code"] != "internal", ack


def livez(stack: Stack) -> None:
    for gw in stack.cluster.gateways:
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.ops_port}/livez", timeout=2) as r:
            assert r.status == 200


@pytest.fixture(scope="module")
async def fuzz_target(cluster: Stack):
    async with aiohttp.ClientSession() as http:
        user = await ChatClient(http, cluster.gateways[0], f"fuzz{uuid.uuid4().hex[:6]}").login()
        guild = await guild_with_members(user)
        sock = await user.connect()
        yield sock, guild["text_channel"]
        await user.close()


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_every_event_answers_any_payload(fuzz_target, cluster: Stack, data):
    sock, channel_id = fuzz_target
    event = data.draw(st.sampled_from(EVENTS))
    payload = data.draw(payloads(channel_id))
    # Frames over the 64 KiB limit close the connection by design (tested elsewhere).
    assume(len(json.dumps([event, payload])) < 60_000)
    ack = await sock.call(event, payload, timeout=10)
    assert_contract_ack(ack)


async def test_odd_argument_shapes_are_answered(fuzz_target, cluster: Stack):
    sock, channel_id = fuzz_target
    for args in [(), (1, 2), ({"channel_id": channel_id}, "extra"), (b"\x00binary",), ([[[[[[[[[[[]]]]]]]]]]],)]:
        ack = await sock.sio.call("message:send", args if len(args) != 1 else args[0], timeout=10) \
            if len(args) == 1 else await sock.sio.call("message:send", args, timeout=10)
        assert_contract_ack(ack)
        assert ack["ok"] is False
    livez(cluster)


async def test_gateway_alive_after_fuzzing(cluster: Stack):
    livez(cluster)
    assert all(p.alive for p in cluster.cluster.processes)


async def test_event_without_ack_callback_does_not_break_the_socket(fuzz_target):
    sock, channel_id = fuzz_target
    await sock.sio.emit("message:send", {"garbage": True})
    await sock.sio.emit("no-such-event", None)
    ack = await sock.call("message:send", {"channel_id": channel_id, "content": "still here", "nonce": "alive"})
    assert ack["ok"], ack


async def test_a_fresh_client_still_connects(cluster: Stack):
    async with aiohttp.ClientSession() as http:
        user = await ChatClient(http, cluster.gateways[1], f"after{uuid.uuid4().hex[:6]}").login()
        rec: Recorder = await user.connect()
        assert rec.events["ready"]
        await user.close()
