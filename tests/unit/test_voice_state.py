"""Voice rules (pure), the voice bus contract, and LiveKit token/webhook signing."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import jwt
import msgspec
import pytest
from livekit import api as lk

from libs.bus import schemas
from libs.config.settings import ConfigError, check_config, load
from libs.errors import Conflict, Invalid
from libs.resilience.breaker import CircuitBreaker
from services.voice_bridge.adapters.livekit import InvalidWebhook, LiveKit
from services.voice_bridge.domain import voice_state as rules
from services.voice_bridge.domain.voice_state import VoiceRecord
from services.voice_bridge.settings import VoiceBridgeSettings

# These tests sign with LiveKit's dev-mode secret ("secret"), shorter than PyJWT recommends for HS256.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def rec(channel: str = "10", session: str = "s1", node: str = "gw-1", **kw: object) -> VoiceRecord:
    return VoiceRecord(user_id="alice", name="Alice", channel_id=channel, guild_id="1", session_id=session,
                       node=node, joined_at=kw.pop("joined_at", 1000.0), **kw)  # type: ignore[arg-type]


def test_only_guild_voice_channels_are_joinable():
    assert rules.check_joinable("voice", "7") == "7"
    with pytest.raises(Invalid):
        rules.check_joinable("text", "7")
    with pytest.raises(Invalid):
        rules.check_joinable("dm", None)
    with pytest.raises(Invalid):
        rules.check_joinable("voice", None)


def test_join_announces_leaving_the_old_channel_first():
    first = rec("10")
    assert rules.join(None, first) == [rules.StateChange(first, True)]
    moved = rec("11")
    changes = rules.join(first, moved)
    assert [(c.record.channel_id, c.connected) for c in changes] == [("10", False), ("11", True)]
    again = rec("10", session="s2")
    assert [(c.record.channel_id, c.connected) for c in rules.join(first, again)] == [("10", True)]


def test_update_keeps_unset_flags_and_needs_a_state():
    r = rec(self_mute=True)
    new = rules.update(r, None, True)
    assert (new.self_mute, new.self_deaf) == (True, True) and rules.changed(r, new)
    assert not rules.changed(r, rules.update(r, True, None))
    with pytest.raises(Conflict):
        rules.update(None, True, None)


def test_keepalive_and_ownership_are_per_session():
    r = rec(session="s1")
    assert rules.keepalive(r, "s1") is r
    with pytest.raises(Conflict):
        rules.keepalive(r, "s2")
    with pytest.raises(Conflict):
        rules.keepalive(None, "s1")
    assert rules.owned_by(r, "s1") and not rules.owned_by(r, "s2") and not rules.owned_by(None, "s1")
    assert rules.on_node(r, "gw-1") and not rules.on_node(r, "gw-2")


def test_livekit_left_only_ends_the_current_connection():
    r = rec("10", joined_at=1000.4)
    assert rules.left_room(r, "10", 1005.0)
    assert rules.left_room(r, "10", 1000.0)  # same second: counts
    assert rules.left_room(r, "10", None)
    assert not rules.left_room(r, "11", 1005.0)  # moved elsewhere since
    assert not rules.left_room(r, "10", 998.0)  # a late event about an earlier connection
    assert not rules.left_room(None, "10", 1005.0)


def test_rooms_and_payload():
    assert rules.room_name("42") == "voice-42"
    assert rules.channel_of_room("voice-42") == "42"
    assert rules.channel_of_room("voice-") is None and rules.channel_of_room("other") is None
    assert rules.state_payload(rec(self_deaf=True), False) == {
        "channel_id": "10", "user_id": "alice", "self_mute": False, "self_deaf": True, "connected": False}


def test_sessions_gone_is_the_published_shape():
    raw = b'{"node": "gw-1", "sessions": [{"user_id": "alice", "session_id": "s1"}]}'
    gone = msgspec.json.decode(raw, type=schemas.SessionsGone)
    assert gone.sessions == [schemas.SessionRef(user_id="alice", session_id="s1")]
    with pytest.raises(msgspec.ValidationError):  # other presence announcements do not decode as this
        msgspec.json.decode(b'{"user_id": "alice", "status": "offline"}', type=schemas.SessionsGone)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"node": "gw-1"}', type=schemas.SessionsGone)


def test_voice_state_ack_shape():
    st = schemas.VoiceState(channel_id="1", user_id="u", self_mute=True, self_deaf=False, connected=True)
    assert msgspec.to_builtins(st) == {"channel_id": "1", "user_id": "u", "self_mute": True,
                                       "self_deaf": False, "connected": True}


def _livekit() -> LiveKit:
    return LiveKit("ws://127.0.0.1:7880", "devkey", "secret", breaker=CircuitBreaker("livekit-unit"))


def test_token_grants_the_channel_room():
    token = _livekit().token("alice", "Alice", "42")
    claims = jwt.decode(token, "secret", algorithms=["HS256"], issuer="devkey")
    assert claims["sub"] == "alice" and claims["name"] == "Alice"
    assert claims["video"]["roomJoin"] is True and claims["video"]["room"] == "voice-42"
    assert claims["video"]["canPublish"] is True
    assert 3500 < claims["exp"] - time.time() <= 3600


def _signed(body: str, secret: str = "secret") -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return lk.AccessToken("devkey", secret).with_sha256(digest).to_jwt()


def test_webhook_verification():
    body = json.dumps({"event": "participant_left", "room": {"name": "voice-42"},
                       "participant": {"identity": "alice"}, "createdAt": "1700000000"})
    event = _livekit().receive_webhook(body, _signed(body))
    assert (event.event, event.room.name, event.participant.identity, event.created_at) == (
        "participant_left", "voice-42", "alice", 1700000000)
    assert _livekit().receive_webhook(body, "Bearer " + _signed(body)).event == "participant_left"
    for token, text in ((_signed(body, "wrong"), body), (_signed(body), body + " "), ("", body),
                        ("x.y.z", body), (_signed("not json"), "not json")):
        with pytest.raises(InvalidWebhook):
            _livekit().receive_webhook(text, token)
    unsigned = lk.AccessToken("devkey", "secret").to_jwt()
    with pytest.raises(InvalidWebhook):
        _livekit().receive_webhook(body, unsigned)


def test_settings_warn_of_a_weak_secret_outside_dev_mode():
    dev = load(VoiceBridgeSettings, {"CHAT_DEV_MODE": "1"})
    assert dev.livekit_api_secret == "secret" and dev.warnings() == []
    (default,) = load(VoiceBridgeSettings, {}).warnings()
    assert default.startswith("CHAT_LIVEKIT_API_SECRET: the dev default")
    (short,) = load(VoiceBridgeSettings, {"CHAT_LIVEKIT_API_SECRET": "x" * 31}).warnings()
    assert "31 characters" in short
    assert load(VoiceBridgeSettings, {"CHAT_LIVEKIT_API_SECRET": "x" * 32}).warnings() == []
    ok, text = check_config(VoiceBridgeSettings, {})
    assert ok and f"# warning: {default}" in text.splitlines()
    ok, text = check_config(VoiceBridgeSettings, {"CHAT_LIVEKIT_API_SECRET": "x" * 32})
    assert ok and "# warning:" not in text
    s = load(VoiceBridgeSettings, {"CHAT_LIVEKIT_API_SECRET": "real", "CHAT_VOICE_STATE_TTL_S": "120"})
    assert s.voice_state_ttl_s == 120
    with pytest.raises(ConfigError):
        load(VoiceBridgeSettings, {"CHAT_DEV_MODE": "1", "CHAT_VOICE_STATE_TTL_S": "5"})
