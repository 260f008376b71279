"""JWT verification: claims, and the cache of tokens already verified."""

from __future__ import annotations

import time

import jwt
import pytest

from libs.auth import tokens
from libs.auth.tokens import TokenVerifier, issue_dev_token
from libs.errors import Unauthorized

SECRET = "unit-test-secret-of-32-bytes-ok!"


def verifier() -> TokenVerifier:
    return TokenVerifier(audience="chat", issuer="chat-dev", secret=SECRET, dev_mode=True, leeway_s=0)


def token(**over: object) -> str:
    return issue_dev_token(SECRET, sub="alice", name="Alice", audience="chat", issuer="chat-dev", **over)


async def test_a_valid_token_gives_the_identity_and_is_then_answered_from_the_cache(monkeypatch):
    v = verifier()
    t = token()
    first = await v.verify(t)
    assert (first.user_id, first.name) == ("alice", "Alice")
    calls = []
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1))
    assert await v.verify(t) == first
    assert calls == []  # no second signature check


async def test_a_cached_token_that_expired_is_refused():
    v = verifier()
    t = token(ttl_s=1)
    assert (await v.verify(t)).user_id == "alice"
    time.sleep(2.1)
    with pytest.raises(Unauthorized, match="expired"):
        await v.verify(t)


async def test_bad_tokens_are_refused_and_not_cached():
    v = verifier()
    forged = jwt.encode({"sub": "alice", "aud": "chat", "iss": "chat-dev", "iat": int(time.time()),
                         "exp": int(time.time()) + 60}, "another-secret-of-32-bytes-long!", algorithm="HS256")
    for bad in (forged, "", "not.a.jwt", "\ud800", "a.\udcff.b", None, 42, "x" * 9000):
        with pytest.raises(Unauthorized):
            await v.verify(bad)
    assert len(v._verified) == 0  # noqa: SLF001


async def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(tokens, "VERIFIED_CACHE_SIZE", 3)
    v = verifier()
    for i in range(5):
        await v.verify(issue_dev_token(SECRET, sub=f"u{i}", name="x", audience="chat", issuer="chat-dev"))
    assert len(v._verified) == 3  # noqa: SLF001
