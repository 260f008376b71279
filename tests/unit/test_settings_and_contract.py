from __future__ import annotations

import gc

import msgspec
import pytest
from prometheus_client import REGISTRY

from libs.bus import subjects
from libs.config.common import parse_thresholds
from libs.config.settings import ConfigError, check_config, load
from libs.errors import RateLimited, from_dict
from libs.observability import gc_tuning
from libs.validation.text import clean_content
from services.gateway.domain import payloads as p
from services.gateway.settings import GatewaySettings
from services.messaging.settings import MessagingSettings


def test_settings_are_typed_and_every_bad_key_is_named():
    s = load(MessagingSettings, {"CHAT_OPS_PORT": "9999", "CHAT_DEV_MODE": "yes", "CHAT_BUS_REQUEST_TIMEOUT_S": "1.5"})
    assert s.ops_port == 9999 and s.dev_mode is True and s.bus_request_timeout_s == 1.5
    with pytest.raises(ConfigError) as exc:
        load(MessagingSettings, {"CHAT_OPS_PORT": "x", "CHAT_DEV_MODE": "maybe"})
    assert len(exc.value.problems) == 2
    assert any("CHAT_OPS_PORT" in p for p in exc.value.problems)


def test_gc_thresholds_are_three_positive_integers():
    assert load(MessagingSettings, {}).gc_thresholds == "50000,10,10"
    assert parse_thresholds("700,10,10") == (700, 10, 10)
    for bad in ("700,10", "0,10,10", "a,b,c", "700,10,10,1"):
        with pytest.raises(ConfigError) as exc:
            load(MessagingSettings, {"CHAT_GC_THRESHOLDS": bad})
        assert any("CHAT_GC_THRESHOLDS" in p for p in exc.value.problems), bad


def test_gc_collections_are_timed_and_thresholds_set():
    before_thresholds = gc.get_threshold()
    try:
        gc_tuning.configure((12345, 7, 9))
        gc_tuning.configure((12345, 7, 9))  # once per process: one callback
        assert gc.get_threshold() == (12345, 7, 9)
        assert gc.callbacks.count(gc_tuning._on_gc) == 1
        before = REGISTRY.get_sample_value("chat_process_gc_seconds_total", {"generation": "2"}) or 0.0
        pauses = REGISTRY.get_sample_value("chat_process_gc_pause_seconds_count") or 0.0
        gc.collect()
        assert (REGISTRY.get_sample_value("chat_process_gc_seconds_total", {"generation": "2"}) or 0.0) > before
        assert REGISTRY.get_sample_value("chat_process_gc_pause_seconds_count") == pauses + 1
    finally:
        gc.set_threshold(*before_thresholds)
        gc.callbacks.remove(gc_tuning._on_gc)


def test_gateway_requires_a_key_source_and_derives_its_ops_port():
    ok, text = check_config(GatewaySettings, {})
    assert not ok and "CHAT_JWT_JWKS_URL" in text
    s = load(GatewaySettings, {"CHAT_DEV_MODE": "1", "CHAT_JWT_SECRET": "x" * 32, "CHAT_PORT": "8081",
                               "CHAT_ALLOWED_ORIGINS": "https://a.example, https://b.example"})
    assert s.effective_ops_port == 9081
    assert s.allowed_origins == ("https://a.example", "https://b.example")


def test_every_subject_comes_from_the_contract_module():
    assert subjects.service_request("messaging", "message_send") == "chat.svc.messaging.message_send"
    assert subjects.metric_label(subjects.gateway_control("gw-1")) == "chat.gateway.control"
    with pytest.raises(ValueError):
        subjects.service_request("nope", "x")


def test_errors_round_trip_over_the_bus():
    err = from_dict(RateLimited("slow down", 1500).to_dict())
    assert err.code == "rate_limited" and err.extra["retry_after_ms"] == 1500
    assert from_dict({"code": "weird"}).code == "internal"


@pytest.mark.parametrize("payload,ok", [
    ({"channel_id": "1", "content": "hi", "nonce": "n"}, True),
    ({"channel_id": 1, "content": "hi", "nonce": "n"}, False),
    ({"channel_id": "1", "content": "", "nonce": "n"}, False),
    ({"channel_id": "1", "content": "hi", "nonce": "n" * 65}, False),
    ({"channel_id": "1", "content": "hi", "nonce": "n", "mentions": ["u"] * 21}, False),
    ({"channel_id": "1", "content": "hi", "nonce": "n", "attachments": [
        {"filename": "a", "size": 100 * 1024 * 1024 + 1, "content_type": "x", "url": "https://x"}]}, False),
    ({"channel_id": "../1", "content": "hi", "nonce": "n"}, False),
    ("a string", False),
    (None, False),
])
def test_message_send_payload_validation(payload, ok):
    if ok:
        msgspec.convert(payload, p.MessageSend)
    else:
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(payload, p.MessageSend)


@pytest.mark.parametrize("raw,expected", [
    ("a < b & c", "a &lt; b &amp; c"),
    ("<script>alert(1)</script>hello", "&lt;script&gt;alert(1)&lt;/script&gt;hello"),
    ("<b onclick=alert(1)>bold</b>", "&lt;b onclick=alert(1)&gt;bold&lt;/b&gt;"),
    ("if (a<b && c>d) {}", "if (a&lt;b &amp;&amp; c&gt;d) {}"),
    ("  e\u0301\u0000\u202e  ", "\u00e9"),
])
def test_content_is_normalised_and_inert(raw, expected):
    assert clean_content(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "\u0000", "x" * 2001])
def test_content_out_of_bounds_is_refused(raw):
    with pytest.raises(ValueError):
        clean_content(raw)
