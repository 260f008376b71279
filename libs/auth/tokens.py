"""JWT verification (PyJWT) for the gateway, and dev-token issuing.

Dev mode: HS256 with ``CHAT_JWT_SECRET``. Production: RS256/ES256 keys from a JWKS URL
(PyJWT's PyJWKClient, keys cached, refresh on unknown ``kid`` throttled, behind a
breaker). The algorithm list is fixed by configuration; ``alg: none`` never passes.
``sub``, ``exp``, ``iat``, ``aud`` and ``iss`` are required.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt

from libs.errors import Unauthorized, Unavailable
from libs.resilience.breaker import CircuitBreaker

SUB_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
REQUIRED_CLAIMS = ["sub", "exp", "iat", "aud", "iss"]
VERIFIED_CACHE_SIZE = 20_000


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def display_name(raw: Any, fallback: str) -> str:
    """A printable display name of at most 64 characters (control characters removed)."""
    name = _CONTROL.sub("", raw).strip()[:64] if isinstance(raw, str) else ""
    return name or fallback


@dataclass(frozen=True)
class Identity:
    user_id: str
    name: str
    expires_at: float


def issue_dev_token(secret: str, *, sub: str, name: str, audience: str, issuer: str,
                    ttl_s: int = 24 * 3600, now: float | None = None) -> str:
    if not SUB_RE.match(sub):
        raise ValueError("sub must be 1-64 chars of [A-Za-z0-9_.-]")
    t = int(now if now is not None else time.time())
    claims = {"sub": sub, "name": display_name(name, sub), "aud": audience, "iss": issuer,
              "iat": t, "exp": t + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")


class TokenVerifier:
    def __init__(self, *, audience: str, issuer: str, secret: str = "", jwks_url: str = "",
                 dev_mode: bool = False, breaker: CircuitBreaker | None = None,
                 leeway_s: int = 30) -> None:
        self.audience = audience
        self.issuer = issuer
        self.secret = secret
        self.leeway_s = leeway_s
        self.breaker = breaker
        self._jwks: jwt.PyJWKClient | None = None
        if jwks_url:
            self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=3600, timeout=3)
            self.algorithms = ["RS256", "ES256"]
        elif dev_mode and secret:
            self.algorithms = ["HS256"]
        else:
            raise ValueError("either CHAT_JWT_JWKS_URL or dev mode with CHAT_JWT_SECRET is required")
        self._last_refresh = 0.0
        # Tokens already verified (a reconnecting client presents the same one): digest ->
        # identity, until the token expires. Verification of a token has no other inputs
        # that change (audience, issuer and keys are fixed; a signing key is never un-trusted
        # while a token it signed is valid).
        self._verified: OrderedDict[bytes, Identity] = OrderedDict()

    async def verify(self, token: Any) -> Identity:
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise Unauthorized("missing or malformed token")
        digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        known = self._verified.get(digest)
        if known is not None:
            if known.expires_at + self.leeway_s > time.time():
                self._verified.move_to_end(digest)
                return known
            del self._verified[digest]
        identity = await self._verify(token)
        self._verified[digest] = identity
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return identity

    async def _verify(self, token: str) -> Identity:
        try:
            if self._jwks is not None:
                key: Any = await self._signing_key(token)
            else:
                key = self.secret
            claims = jwt.decode(
                token, key, algorithms=self.algorithms, audience=self.audience, issuer=self.issuer,
                leeway=self.leeway_s, options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except (jwt.PyJWTError, UnicodeError, ValueError, TypeError) as exc:
            raise Unauthorized(f"invalid token: {type(exc).__name__}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not SUB_RE.match(sub):
            raise Unauthorized("invalid subject")
        return Identity(user_id=sub, name=display_name(claims.get("name"), sub), expires_at=float(claims["exp"]))

    async def _signing_key(self, token: str) -> Any:
        assert self._jwks is not None
        jwks = self._jwks

        async def fetch() -> Any:
            return await asyncio.to_thread(jwks.get_signing_key_from_jwt, token)

        try:
            if self.breaker is not None:
                return (await self.breaker.call(fetch)).key
            return (await fetch()).key
        except jwt.PyJWKClientConnectionError:
            raise Unavailable("identity provider unavailable") from None
        except jwt.PyJWKClientError as exc:
            raise Unauthorized(f"unknown signing key: {exc}") from None
