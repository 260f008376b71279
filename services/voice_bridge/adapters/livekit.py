"""LiveKit: access tokens (signed locally), webhook verification, and server API calls.

Server calls are best effort from the user's point of view: they run in the background
under the ``livekit`` breaker with a timeout, are bounded in number, and are counted.
A LiveKit outage never fails a voice command.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import hmac
import logging

import aiohttp
import jwt
from google.protobuf.json_format import Parse, ParseError
from livekit import api as lk
from livekit.api.room_service import RoomService
from prometheus_client import Counter, Gauge

from libs.errors import Unavailable
from libs.resilience.breaker import CircuitBreaker
from services.voice_bridge.domain.voice_state import room_name

log = logging.getLogger(__name__)

LIVEKIT_CALLS = Counter("chat_voice_livekit_calls_total", "LiveKit server API calls, by call and outcome",
                        ["call", "outcome"])
LIVEKIT_PENDING = Gauge("chat_voice_livekit_pending_calls", "LiveKit server API calls in flight")
TOKENS_ISSUED = Counter("chat_voice_tokens_issued_total", "LiveKit access tokens issued")

MAX_PENDING = 1000


class InvalidWebhook(Exception):
    """A webhook whose signature, body hash or body does not check out."""


class LiveKit:
    def __init__(self, url: str, api_key: str, api_secret: str, *, breaker: CircuitBreaker,
                 timeout_s: float = 2.0, token_ttl_s: int = 3600) -> None:
        self.url = url
        self.api_key = api_key
        self._secret = api_secret
        self.breaker = breaker
        self.timeout_s = timeout_s
        self.token_ttl = datetime.timedelta(seconds=token_ttl_s)
        self._verifier = lk.TokenVerifier(api_key, api_secret)
        self._session: aiohttp.ClientSession | None = None
        self._rooms: RoomService | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._rooms = RoomService(self._session, self.url, self.api_key, self._secret, failover=False)

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- tokens and webhooks -----------------------------------------------------------------
    def token(self, user_id: str, name: str, channel_id: str) -> str:
        """A token to join the channel's room. Mute is a client state: publishing stays allowed."""
        grants = lk.VideoGrants(room_join=True, room=room_name(channel_id), can_publish=True,
                                can_subscribe=True, can_publish_data=True)
        jwt = (lk.AccessToken(self.api_key, self._secret).with_identity(user_id).with_name(name)
               .with_grants(grants).with_ttl(self.token_ttl).to_jwt())
        TOKENS_ISSUED.inc()
        return jwt

    def receive_webhook(self, body: str, auth: str) -> lk.WebhookEvent:
        token = auth.removeprefix("Bearer ")
        if not token:
            raise InvalidWebhook("no Authorization token")
        # WebhookReceiver.receive, with each failure typed (it raises a bare Exception
        # on a hash mismatch).
        try:
            claims = self._verifier.verify(token)
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidWebhook(type(exc).__name__) from None
        if not claims.sha256:
            raise InvalidWebhook("no body hash in the token")
        try:
            expected = base64.b64decode(claims.sha256, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidWebhook("malformed body hash") from None
        if not hmac.compare_digest(hashlib.sha256(body.encode()).digest(), expected):
            raise InvalidWebhook("body hash mismatch")
        try:
            return Parse(body, lk.WebhookEvent(), ignore_unknown_fields=True)
        except ParseError:
            raise InvalidWebhook("undecodable body") from None

    # -- server calls --------------------------------------------------------------------
    def remove_participant_soon(self, channel_id: str, user_id: str) -> None:
        """Disconnect the user's media session from the channel's room, in the background."""
        if len(self._pending) >= MAX_PENDING:
            LIVEKIT_CALLS.labels("remove_participant", "dropped").inc()
            return
        task = asyncio.create_task(self._remove(room_name(channel_id), user_id), name="livekit-remove")
        self._pending.add(task)
        LIVEKIT_PENDING.set(len(self._pending))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        LIVEKIT_PENDING.set(len(self._pending))

    async def _remove(self, room: str, identity: str) -> None:
        rooms = self._rooms
        if rooms is None:
            return
        outcome = "ok"
        try:
            async with self.breaker.guard(counts=_is_outage):
                await asyncio.wait_for(
                    rooms.remove_participant(lk.RoomParticipantIdentity(room=room, identity=identity)),
                    self.timeout_s)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Unavailable:
            outcome = "rejected"  # breaker open
        except lk.ServerError as exc:
            outcome = "not_found" if exc.status == 404 else "error"
            if outcome == "error":
                log.warning("livekit remove_participant answered %s", exc.code)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            outcome = "error"
            log.warning("livekit remove_participant failed: %s", type(exc).__name__)
        finally:
            LIVEKIT_CALLS.labels("remove_participant", outcome).inc()

    def health(self) -> dict[str, object]:
        return {"breaker": self.breaker.state, "pending": len(self._pending)}


def _is_outage(exc: BaseException) -> bool:
    """A 4xx answer means LiveKit is up (the participant was already gone, say)."""
    if isinstance(exc, asyncio.CancelledError):
        return False
    if isinstance(exc, lk.ServerError):
        return exc.status >= 500
    return isinstance(exc, Exception)
