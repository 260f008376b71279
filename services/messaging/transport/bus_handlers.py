"""Messaging's NATS handlers: decode -> domain/store -> encode, then emit after commit."""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar

import msgspec
from opentelemetry import trace
from prometheus_client import Counter

from libs.bus import schemas, subjects
from libs.bus.client import Bus
from libs.bus.subjects import MessagingOps as Ops
from libs.errors import Invalid, NotFound
from libs.observability import tracing
from libs.sio.redis_manager import ResilientRedisManager, channel_room, user_room
from libs.validation import text as rules
from services.messaging.adapters.guild_store import GuildStore
from services.messaging.adapters.outbox import OutboxPublisher
from services.messaging.adapters.store import Store

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
R = TypeVar("R")
INVITE_CODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

MESSAGES_STORED = Counter("chat_messaging_messages_stored_total", "Messages committed")
MESSAGES_DUPLICATE = Counter("chat_messaging_messages_duplicate_total", "Sends answered from an earlier nonce")
EMITS = Counter("chat_messaging_room_emits_total", "Room events handed to the Socket.IO adapter", ["event"])
REPLIES_PARTIAL = Counter("chat_messaging_replies_partial_total",
                          "Replies cut short to stay under the bus's payload limit (ready_many, sync_many: "
                          "the gateway asks again for the rest; sync: complete false, the client calls again)",
                          ["op"])
READY_MANY_MAX = 256  # users in one ready_many request
SYNC_MANY_MAX = 256  # calls in one sync_many request
SYNC_CHANNELS_MAX = 500  # channels in one sync call


class MessagingHandlers:
    def __init__(self, store: Store, guilds: GuildStore, bus: Bus, emitter: ResilientRedisManager,
                 outbox: OutboxPublisher, sync_page_size: int = 100, sync_budget: int = 1000,
                 reply_max_bytes: int = 512 * 1024) -> None:
        self.store = store
        self.reply_max_bytes = reply_max_bytes  # half of NATS' default payload limit
        self.guilds = guilds
        self.sync_page_size = sync_page_size
        self.sync_budget = sync_budget
        self.bus = bus
        self.emitter = emitter
        self.outbox = outbox

    async def register(self) -> None:
        q = subjects.queue_group("messaging")
        table: list[tuple[str, Any, type]] = [
            (Ops.READY, self.ready, schemas.ReadyRequest),
            (Ops.READY_MANY, self.ready_many, schemas.ReadyMany),
            (Ops.SEND, self.send, schemas.SendMessage),
            (Ops.HISTORY, self.history, schemas.HistoryRequest),
            (Ops.CHANNEL_ACCESS, self.channel_access, schemas.ChannelAccess),
            (Ops.GUILD_CREATE, self.guild_create, schemas.CreateGuild),
            (Ops.GUILD_GET, self.guild_get, schemas.GuildRequest),
            (Ops.INVITE_CREATE, self.invite_create, schemas.GuildRequest),
            (Ops.INVITE_ACCEPT, self.invite_accept, schemas.AcceptInvite),
            (Ops.EDIT, self.edit, schemas.EditMessage),
            (Ops.DELETE, self.delete, schemas.DeleteMessage),
            (Ops.DM_SEND, self.dm_send, schemas.DmSend),
            (Ops.SYNC, self.sync, schemas.SyncRequest),
            (Ops.SYNC_MANY, self.sync_many, schemas.SyncMany),
            (Ops.CHANNEL_CREATE, self.channel_create, schemas.CreateChannel),
            (Ops.MEMBER_ROLE, self.member_role, schemas.SetRole),
            (Ops.FRIENDS_LIST, self.friends_list, schemas.ReadyRequest),
            (Ops.FRIEND_PUT, self.friend_put, schemas.FriendRequest),
            (Ops.FRIEND_DELETE, self.friend_delete, schemas.FriendRequest),
        ]
        for op, handler, req_type in table:
            await self.bus.serve(subjects.service_request("messaging", op), handler, req_type, queue=q)

    async def emit(self, event: str, channel_id: str, payload: Any, rooms: list[str] | None = None) -> None:
        with tracing.span(_tracer, f"room.emit {event}"):
            await self.emitter.emit(event, msgspec.to_builtins(payload), room=rooms or channel_room(channel_id),
                                    namespace="/")
        EMITS.labels(event).inc()

    # -- handlers ------------------------------------------------------------------------
    async def ready(self, req: schemas.ReadyRequest) -> schemas.ReadyReply:
        return await self.store.ready(req.user)

    async def ready_many(self, req: schemas.ReadyMany) -> schemas.ReadyManyReply:
        """`ready` for the users of a connect burst, in one statement. The reply stops
        before the user whose `ready` would take it past ``reply_max_bytes`` (always
        carrying the first); the gateway asks again for the rest."""
        if len(req.users) > READY_MANY_MAX:
            raise Invalid(f"at most {READY_MANY_MAX} users in one ready_many request")
        return schemas.ReadyManyReply(replies=self._fit(Ops.READY_MANY, await self.store.ready_many(req.users)))

    def _fit(self, op: str, replies: list[R]) -> list[R]:
        """The first of ``replies`` whose encodings fit in ``reply_max_bytes`` together
        (the first always): a batch's reply must stay under the bus's payload limit."""
        size = 0
        for i, reply in enumerate(replies):
            size += len(schemas.dumps(reply))
            if size > self.reply_max_bytes and i > 0:
                REPLIES_PARTIAL.labels(op).inc()
                log.info("%s: answering %d of %d (%d bytes)", op, i, len(replies), size)
                return replies[:i]
        return replies

    async def send(self, req: schemas.SendMessage, rooms: list[str] | None = None) -> schemas.MessageReply:
        text = _content(req.content)
        req.attachments, req.embeds = _clean_extras(req)
        msg, duplicate = await self.store.create_message(req, text)
        if duplicate:
            MESSAGES_DUPLICATE.inc()
        else:
            MESSAGES_STORED.inc()
            await self.emit("message:created", msg.channel_id,
                            {"channel_id": msg.channel_id, "seq": msg.seq, "message": msg}, rooms)
            self.outbox.wake()
        return schemas.MessageReply(message=msg, duplicate=duplicate)

    async def edit(self, req: schemas.EditMessage) -> schemas.MessageReply:
        msg, seq = await self.store.edit_message(req.user, req.channel_id, req.message_id, _content(req.content))
        await self.emit("message:updated", msg.channel_id, {"channel_id": msg.channel_id, "seq": seq, "message": msg})
        self.outbox.wake()
        return schemas.MessageReply(message=msg)

    async def delete(self, req: schemas.DeleteMessage) -> schemas.DeleteReply:
        mid, seq = await self.store.delete_message(req.user, req.channel_id, req.message_id)
        await self.emit("message:deleted", req.channel_id, {"channel_id": req.channel_id, "seq": seq, "message_id": mid})
        self.outbox.wake()
        return schemas.DeleteReply(message_id=mid, seq=seq)

    async def dm_send(self, req: schemas.DmSend) -> schemas.DmReply:
        text = _content(req.content)
        channel_id, created = await self.store.open_dm_retrying(req.user, req.recipient_id)
        rooms = None
        if created:
            # Sockets join the new channel's room through a bus broadcast that may arrive after
            # the first message: that one goes to both users' own rooms instead.
            await self._join_rooms([req.user.id, req.recipient_id], [channel_id])
            rooms = [user_room(req.user.id), user_room(req.recipient_id)]
        reply = await self.send(schemas.SendMessage(user=req.user, channel_id=channel_id, content=text,
                                                    nonce=req.nonce), rooms)
        return schemas.DmReply(channel_id=channel_id, message=reply.message, duplicate=reply.duplicate)

    async def sync(self, req: schemas.SyncRequest) -> schemas.SyncReply:
        return (await self._sync([req]))[0]

    async def sync_many(self, req: schemas.SyncMany) -> schemas.SyncManyReply:
        """`sync` for the calls of a reconnect storm, in one statement. The reply stops
        before the call whose answer would take it past ``reply_max_bytes`` (always
        carrying the first); the gateway asks again for the rest."""
        if len(req.calls) > SYNC_MANY_MAX:
            raise Invalid(f"at most {SYNC_MANY_MAX} calls in one sync_many request")
        return schemas.SyncManyReply(replies=self._fit(Ops.SYNC_MANY, await self._sync(req.calls)))

    async def _sync(self, calls: list[schemas.SyncRequest]) -> list[schemas.SyncReply]:
        """Each call's answer, its events' payloads within ``reply_max_bytes`` (where they
        were cut, ``complete`` is false and the client calls again)."""
        if any(len(c.channels) > SYNC_CHANNELS_MAX for c in calls):
            raise Invalid(f"channels: at most {SYNC_CHANNELS_MAX} per call")
        # An answer's events may fill the budget; the rest of a reply (ids, flags) is small.
        room = self.reply_max_bytes * 9 // 10
        answers = await self.store.sync_many([(c.user, c.channels) for c in calls], self.sync_page_size,
                                             self.sync_budget, room)
        for answer in answers:
            if answer.cut:
                REPLIES_PARTIAL.labels(Ops.SYNC).inc()
                log.info("sync: events cut at %d bytes; the client calls again", room)
        return [schemas.SyncReply(channels=a.channels) for a in answers]

    async def channel_create(self, req: schemas.CreateChannel) -> schemas.ChannelReply:
        if req.kind not in ("text", "voice"):
            raise Invalid("kind: must be text or voice")
        name = rules.clean_plain(req.name, 100).strip()
        if not name:
            raise Invalid("name: must not be empty")
        channel, members = await self.guilds.create_channel(req.user, req.guild_id, name, req.kind)
        await self._join_rooms(members, [channel.id])
        return schemas.ChannelReply(channel=channel)

    async def member_role(self, req: schemas.SetRole) -> schemas.Member:
        if req.role not in ("admin", "moderator", "member"):
            raise Invalid("role: must be admin, moderator or member")
        return await self.guilds.set_role(req.user, req.guild_id, req.user_id, req.role)

    async def friends_list(self, req: schemas.ReadyRequest) -> schemas.FriendsReply:
        return msgspec.convert(await self.guilds.friends(req.user), schemas.FriendsReply)

    async def friend_put(self, req: schemas.FriendRequest) -> schemas.FriendStatus:
        return schemas.FriendStatus(status=await self.guilds.put_friend(req.user, req.friend_id))

    async def friend_delete(self, req: schemas.FriendRequest) -> schemas.Empty:
        await self.guilds.delete_friend(req.user, req.friend_id)
        return schemas.Empty()

    async def history(self, req: schemas.HistoryRequest) -> schemas.HistoryReply:
        return schemas.HistoryReply(messages=await self.store.history(req))

    async def channel_access(self, req: schemas.ChannelAccess) -> schemas.ChannelReply:
        return schemas.ChannelReply(channel=await self.store.channel_access(req.user, req.channel_id))

    async def guild_create(self, req: schemas.CreateGuild) -> schemas.Guild:
        name = rules.clean_plain(req.name, 100).strip()
        if not name:
            raise Invalid("name: must not be empty")
        guild = await self.guilds.create_guild(req.user, name)
        await self._join_rooms([req.user.id], [c.id for c in guild.channels], [guild.id])
        return guild

    async def guild_get(self, req: schemas.GuildRequest) -> schemas.Guild:
        return await self.guilds.get_guild(req.user, req.guild_id)

    async def invite_create(self, req: schemas.GuildRequest) -> schemas.InviteReply:
        return schemas.InviteReply(code=await self.guilds.create_invite(req.user, req.guild_id))

    async def invite_accept(self, req: schemas.AcceptInvite) -> schemas.Guild:
        if not INVITE_CODE_RE.match(req.code):
            raise NotFound("invite not found")
        guild, _joined = await self.guilds.accept_invite(req.user, req.code)
        await self._join_rooms([req.user.id], [c.id for c in guild.channels], [guild.id])
        return guild

    async def _join_rooms(self, user_ids: list[str], channel_ids: list[str],
                          guild_ids: list[str] | None = None) -> None:
        """Connected sessions of these users start receiving these channels at once."""
        try:
            await self.bus.publish(subjects.gateway_broadcast(), schemas.GatewayControl(
                op="join", user_ids=user_ids, channel_ids=channel_ids, guild_ids=guild_ids or []))
        except Exception as exc:
            # The change is committed; sockets pick the channels up at their next connect.
            log.warning("could not tell gateways to join rooms: %s", exc)


def _content(raw: str) -> str:
    try:
        return rules.clean_content(raw)
    except ValueError as exc:
        raise Invalid(f"content: {exc}") from None


def _clean_extras(req: schemas.SendMessage) -> tuple[list[schemas.Attachment], list[schemas.Embed]]:
    if len(req.attachments) > rules.MAX_ATTACHMENTS:
        raise Invalid(f"attachments: at most {rules.MAX_ATTACHMENTS}")
    if len(req.embeds) > rules.MAX_EMBEDS:
        raise Invalid(f"embeds: at most {rules.MAX_EMBEDS}")
    if len(req.mentions) > rules.MAX_MENTIONS:
        raise Invalid(f"mentions: at most {rules.MAX_MENTIONS}")
    attachments = []
    for a in req.attachments:
        if not (0 <= a.size <= rules.MAX_ATTACHMENT_BYTES):
            raise Invalid("attachments: size must be between 0 and 100 MiB")
        if not a.url.startswith(("https://", "http://")):
            raise Invalid("attachments: url must be http(s)")
        attachments.append(schemas.Attachment(
            filename=rules.clean_plain(a.filename, 255), size=a.size,
            content_type=rules.clean_plain(a.content_type, 127), url=a.url[:2048]))
    embeds = []
    for e in req.embeds:
        if e.url is not None and not e.url.startswith(("https://", "http://")):
            raise Invalid("embeds: url must be http(s)")
        embeds.append(schemas.Embed(
            title=rules.clean_plain(e.title, 256) if e.title else None,
            description=rules.clean_plain(e.description, 4096) if e.description else None,
            url=e.url[:2048] if e.url else None))
    return attachments, embeds
