"""Typed payloads of every client event (PROTOCOL.md), validated with msgspec.

Limits here bound what a client may send at all; messaging applies the content rules
(length after normalisation, sanitisation) that need the text itself.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Id = Annotated[str, Meta(min_length=1, max_length=20, pattern=r"^[0-9]+$")]
UserId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Nonce = Annotated[str, Meta(min_length=1, max_length=64)]
Content = Annotated[str, Meta(min_length=1, max_length=8000)]
Reason = Annotated[str, Meta(max_length=512)]
Url = Annotated[str, Meta(max_length=2048)]
Duration = Annotated[int, Meta(ge=1, le=10 * 365 * 24 * 3600)]


class Payload(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    pass


class AttachmentIn(Payload):
    filename: Annotated[str, Meta(min_length=1, max_length=255)]
    size: Annotated[int, Meta(ge=0, le=100 * 1024 * 1024)]
    content_type: Annotated[str, Meta(max_length=127)]
    url: Url


class EmbedIn(Payload):
    title: Annotated[str, Meta(max_length=256)] | None = None
    description: Annotated[str, Meta(max_length=4096)] | None = None
    url: Url | None = None


class MessageSend(Payload):
    channel_id: Id
    content: Content
    nonce: Nonce
    attachments: Annotated[list[AttachmentIn], Meta(max_length=10)] = []
    embeds: Annotated[list[EmbedIn], Meta(max_length=5)] = []
    mentions: Annotated[list[UserId], Meta(max_length=20)] = []
    reply_to: Id | None = None


class MessageEdit(Payload):
    channel_id: Id
    message_id: Id
    content: Content


class MessageDelete(Payload):
    channel_id: Id
    message_id: Id


class DmSend(Payload):
    recipient_id: UserId
    content: Content
    nonce: Nonce


class ChannelRef(Payload):
    channel_id: Id


class Activity(Payload):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    kind: Annotated[str, Meta(min_length=1, max_length=32)]


class PresenceUpdate(Payload):
    status: Literal["online", "idle", "dnd", "invisible"]
    activity: Activity | None = None


class VoiceJoin(Payload):
    channel_id: Id
    self_mute: bool = False
    self_deaf: bool = False


class VoiceUpdate(Payload):
    self_mute: bool | None = None
    self_deaf: bool | None = None


class Empty(Payload):
    pass


class ModTarget(Payload):
    guild_id: Id
    user_id: UserId
    reason: Reason | None = None


class ModBan(ModTarget, kw_only=True):
    duration_s: Duration | None = None


class ModTimeout(ModTarget, kw_only=True):
    duration_s: Duration


class Sync(Payload):
    channels: Annotated[dict[Id, Annotated[int, Meta(ge=0, le=2**62)]], Meta(max_length=500)]


def describe_error(exc: msgspec.ValidationError) -> str:
    """msgspec says e.g. "Expected `str`, got `int` - at `$.content`"; keep it short."""
    return str(exc)[:300]
