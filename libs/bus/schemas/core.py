"""Typed bus messages (msgspec). Every request and reply on NATS is one of these.

Payload objects the client sees (Message, Channel, Guild) are the same structs, so a
reply travels gateway-ward and out to the socket without being reshaped.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Struct(msgspec.Struct, kw_only=True, omit_defaults=False):
    pass


class UserRef(Struct):
    id: str
    name: str


class Attachment(Struct):
    filename: str
    size: int
    content_type: str
    url: str


class Embed(Struct):
    title: str | None = None
    description: str | None = None
    url: str | None = None


class Message(Struct, kw_only=True):
    id: str
    channel_id: str
    seq: int
    author: UserRef
    content: str
    nonce: str | None
    attachments: list[Attachment] = []
    embeds: list[Embed] = []
    mentions: list[str] = []
    reply_to: str | None = None
    created_at: str = ""
    edited_at: str | None = None


class GuildSummary(Struct):
    id: str
    name: str
    role: str


class Channel(Struct):
    id: str
    guild_id: str | None
    name: str
    kind: str
    last_seq: int


class Member(Struct):
    user_id: str
    name: str
    role: str


class Guild(Struct):
    id: str
    name: str
    owner_id: str
    channels: list[Channel] = []
    members: list[Member] = []


# -- envelopes ----------------------------------------------------------------------------
class ErrorBody(Struct):
    code: str
    message: str
    retry_after_ms: int | None = None


class Reply(Struct):
    """Every reply on the bus: ``ok`` with ``data`` or an error with a contract code."""

    ok: bool
    data: msgspec.Raw = msgspec.Raw(b"null")
    error: ErrorBody | None = None


class Empty(Struct):
    pass


class Pong(Struct):
    service: str
    node: str


# -- messaging requests -----------------------------------------------------------------
class MessageCreated(Struct):
    """Body of ``chat.events.message.created`` (the outbox's JetStream event, also seen by
    core subscribers): the live ``message:created`` payload plus its event id."""

    event_id: str
    channel_id: str
    seq: int
    message: Message


class ReadyRequest(Struct):
    user: UserRef


class ReadyReply(Struct):
    user: UserRef
    guilds: list[GuildSummary]
    channels: list[Channel]
    friend_ids: list[str] = []
    contact_ids: list[str] = []  # friends and co-members (capped), whose presence `ready` shows
    presence_guild_ids: list[str] = []  # guilds small enough for presence broadcasts


class ReadyMany(Struct):
    """Users a gateway connected while its previous `ready` request was in flight (a
    connect burst): messaging answers them with one statement."""

    users: list[UserRef]


class ReadyManyReply(Struct):
    # One per user, in the request's order. Fewer when all would not fit in one reply: the
    # gateway asks again for the users after the last one answered.
    replies: list[ReadyReply]


class SendMessage(Struct):
    user: UserRef
    channel_id: str
    content: str
    nonce: str
    attachments: list[Attachment] = []
    embeds: list[Embed] = []
    mentions: list[str] = []
    reply_to: str | None = None


class MessageReply(Struct):
    message: Message
    duplicate: bool = False


class HistoryRequest(Struct):
    user: UserRef
    channel_id: str
    before_seq: int | None = None
    after_seq: int | None = None
    limit: int = 50


class HistoryReply(Struct):
    messages: list[Message]


class CreateGuild(Struct):
    user: UserRef
    name: str


class GuildRequest(Struct):
    user: UserRef
    guild_id: str


class InviteReply(Struct):
    code: str


class AcceptInvite(Struct):
    user: UserRef
    code: str


class ChannelAccess(Struct):
    user: UserRef
    channel_id: str


class ChannelReply(Struct):
    channel: Channel


def dumps(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


# -- gateway control (broadcast to every gateway node) -------------------------------------
class GatewayControl(Struct):
    """``join`` / ``leave``: make every local socket of ``user_ids`` enter or leave the
    rooms of ``channel_ids`` and ``guild_ids``; ``disconnect``: disconnect those users'
    sockets; ``presence_resync``: re-register every local session with presence."""

    op: str
    user_ids: list[str]
    channel_ids: list[str] = []
    guild_ids: list[str] = []
    reason: str | None = None


class EditMessage(Struct):
    user: UserRef
    channel_id: str
    message_id: str
    content: str


class DeleteMessage(Struct):
    user: UserRef
    channel_id: str
    message_id: str


class DeleteReply(Struct):
    message_id: str
    seq: int


class DmSend(Struct):
    user: UserRef
    recipient_id: str
    content: str
    nonce: str


class DmReply(Struct):
    channel_id: str
    message: Message
    duplicate: bool = False


class SyncRequest(Struct):
    user: UserRef
    channels: dict[str, int]


class SyncChannel(Struct):
    events: list[msgspec.Raw]
    complete: bool
    last_seq: int | None = None
    error: ErrorBody | None = None


class SyncReply(Struct):
    channels: dict[str, SyncChannel]


class SyncMany(Struct):
    """`sync` calls a gateway received while its previous sync request was in flight (a
    reconnect storm): messaging answers them with one statement."""

    calls: list[SyncRequest]


class SyncManyReply(Struct):
    # One per call, in the request's order. Fewer when all would not fit in one reply: the
    # gateway asks again for the calls after the last one answered.
    replies: list[SyncReply]


class CreateChannel(Struct):
    user: UserRef
    guild_id: str
    name: str
    kind: str


class SetRole(Struct):
    user: UserRef
    guild_id: str
    user_id: str
    role: str


class FriendRequest(Struct):
    user: UserRef
    friend_id: str


class FriendStatus(Struct):
    status: str


class FriendsReply(Struct):
    friends: list[UserRef]
    incoming: list[UserRef]
    outgoing: list[UserRef]
