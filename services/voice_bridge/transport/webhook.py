"""``POST /livekit/webhook`` on the ops port: LiveKit tells us about its rooms.

The body is verified with livekit-api's WebhookReceiver (a JWT signed with our API
key/secret carrying the body's SHA-256). ``participant_left`` in one of our voice rooms
ends the user's voice state; other events are acknowledged and ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter

from libs.errors import ChatError
from libs.ops.server import json_response
from services.voice_bridge.adapters.livekit import InvalidWebhook, LiveKit
from services.voice_bridge.domain.voice_state import channel_of_room
from services.voice_bridge.transport.bus_handlers import VoiceHandlers

log = logging.getLogger(__name__)

WEBHOOKS = Counter("chat_voice_webhooks_total", "LiveKit webhooks received, by event and outcome", ["event", "outcome"])

KNOWN_EVENTS = frozenset({"room_started", "room_finished", "participant_joined", "participant_left",
                          "participant_connection_aborted", "track_published", "track_unpublished",
                          "egress_started", "egress_updated", "egress_ended", "ingress_started", "ingress_ended"})
MAX_BODY = 256 * 1024


Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install(add_post: Callable[[str, Route], None], livekit: LiveKit, handlers: VoiceHandlers) -> None:
    """Add the route (before the ops server starts)."""

    async def webhook(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            WEBHOOKS.labels("unknown", "too_large").inc()
            return json_response({"error": {"code": "invalid", "message": "body too large"}}, status=413)
        body = await request.text()
        try:
            event = livekit.receive_webhook(body, request.headers.get("Authorization", ""))
        except InvalidWebhook as exc:
            WEBHOOKS.labels("unknown", "rejected").inc()
            log.warning("livekit webhook rejected: %s", exc)
            return json_response({"error": {"code": "unauthorized", "message": "invalid webhook"}}, status=401)
        name = event.event if event.event in KNOWN_EVENTS else "other"
        if event.event != "participant_left":
            WEBHOOKS.labels(name, "ignored").inc()
            return json_response({"ok": True})
        channel_id = channel_of_room(event.room.name)
        user_id = event.participant.identity
        if channel_id is None or not user_id:
            WEBHOOKS.labels(name, "ignored").inc()
            return json_response({"ok": True})
        try:
            left = await handlers.participant_left(channel_id, user_id, float(event.created_at) or None)
        except ChatError as exc:
            # Unavailable: LiveKit retries a webhook that is not answered with 2xx.
            WEBHOOKS.labels(name, exc.code).inc()
            return json_response({"error": exc.to_dict()}, status=exc.http_status)
        WEBHOOKS.labels(name, "applied" if left else "stale").inc()
        return json_response({"ok": True, "applied": left})

    add_post("/livekit/webhook", webhook)
