"""Messaging's Postgres adapter: every query of the chat domain lives here."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec

from libs.batching.group_commit import GroupCommit
from libs.bus import schemas, subjects
from libs.db.database import Database
from libs.db.templates import fill
from libs.errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from services.messaging.adapters.rows import (
    MESSAGE_COLUMNS,
    channel_from_row,
    iso,
    message_from_row,
)

MAX_CONTACTS = 1000  # presences carried by `ready`; larger audiences query presence on demand
# Guilds above this size get no presence broadcasts (each change would reach every member:
# O(n^2) deliveries when a large guild comes online); friends still see each other.
PRESENCE_GUILD_MAX = 250
ROLE_RANK = {"member": 0, "moderator": 1, "admin": 2, "owner": 3}


_ID_RE = re.compile(r"^[0-9]{1,19}$")


def _id(value: str, what: str) -> int:
    """A public id (decimal ASCII digits) as the bigint key; NotFound for anything else."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise NotFound(f"{what} not found")
    n = int(value)
    if n <= 0 or n >= 2**63:
        raise NotFound(f"{what} not found")
    return n


# What `ready` carries for one user, written once for the statements below: USER_ID stands
# for the user's id ($1 alone, a column of the batch's users), $3 is PRESENCE_GUILD_MAX and
# $4 MAX_CONTACTS.
_READY_CTES = """g AS (
    SELECT g.id, g.name, gm.role,
           (SELECT count(*) FROM guild_members x WHERE x.guild_id = g.id) AS members
    FROM guild_members gm JOIN guilds g ON g.id = gm.guild_id WHERE gm.user_id = USER_ID
), ch AS (
    SELECT c.id, c.guild_id, c.name, c.kind, c.last_seq
    FROM channels c JOIN guild_members gm ON gm.guild_id = c.guild_id WHERE gm.user_id = USER_ID
    UNION ALL
    SELECT c.id, c.guild_id, c.name, c.kind, c.last_seq
    FROM channels c JOIN dm_channels d ON d.channel_id = c.id WHERE d.user_a = USER_ID OR d.user_b = USER_ID
), small AS (
    SELECT id FROM g WHERE members <= $3
)
SELECT
    coalesce((SELECT json_agg(json_build_object('id', id::text, 'name', name, 'role', role) ORDER BY id) FROM g),
             '[]') AS guilds,
    coalesce((SELECT json_agg(json_build_object('id', id::text, 'guild_id', guild_id::text, 'name', name,
                                                'kind', kind, 'last_seq', last_seq) ORDER BY id) FROM ch),
             '[]') AS channels,
    coalesce((SELECT json_agg(f.friend_id ORDER BY f.friend_id) FROM friendships f
              JOIN friendships b ON b.user_id = f.friend_id AND b.friend_id = f.user_id
              WHERE f.user_id = USER_ID), '[]') AS friends,
    coalesce((SELECT json_agg(id::text ORDER BY id) FROM small), '[]') AS small,
    coalesce((SELECT json_agg(m.user_id) FROM (
                  SELECT DISTINCT x.user_id FROM small s CROSS JOIN LATERAL (
                      SELECT user_id FROM guild_members WHERE guild_id = s.id AND user_id <> USER_ID LIMIT $4) x
                  LIMIT $4) m), '[]') AS co_members"""
# One user ($1, named $2): recorded, and what `ready` carries, in one statement.
READY_SQL = """
WITH u AS (
    INSERT INTO users (id, name) SELECT $1, $2
    WHERE NOT EXISTS (SELECT 1 FROM users WHERE id = $1 AND name = $2)
    ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name WHERE users.name <> EXCLUDED.name
), """ + fill(_READY_CTES, {"USER_ID": "$1"})
# The users of a connect burst ($1 ids, $2 names; a user twice is answered once): one row
# each, with its id. One statement instead of one round trip and one execution per user.
# The batch is taken in id order, so two batches that write the same new users lock their
# rows in the same order: neither can hold one row the other waits for while it waits.
READY_MANY_SQL = """
WITH batch AS (
    SELECT DISTINCT ON (id) id, name FROM unnest($1::text[], $2::text[]) AS t(id, name) ORDER BY id
), u AS (
    INSERT INTO users (id, name) SELECT bu.id, bu.name FROM batch bu
    WHERE NOT EXISTS (SELECT 1 FROM users x WHERE x.id = bu.id AND x.name = bu.name)
    ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name WHERE users.name <> EXCLUDED.name
)
SELECT bu.id AS user_id, r.* FROM batch bu CROSS JOIN LATERAL (WITH """ + fill(_READY_CTES, {"USER_ID": "bu.id"}) + """) r
"""
# Two shapes above are deliberate. `u` writes only a new user or a changed name: an ON CONFLICT
# that matches locks the row, a write (and a transaction id) on every connect. `co_members`
# reads each small guild's members by the primary key (guild_id, user_id); the LIMIT inside
# the LATERAL keeps Postgres from flattening it into a scan of every membership through the
# user_id index (a generic plan did that: 1.3 ms of Postgres CPU per `ready` instead of 0.2).

# Who may see a channel, for `c` = the channel and USER_ID = the user: a guild channel's
# members, a DM's two users (`v.visible`). Every read that checks access joins this, so the
# rule is written once.
_CHANNEL_ACCESS_FROM = """channels c
LEFT JOIN guild_members gm ON gm.guild_id = c.guild_id AND gm.user_id = USER_ID
LEFT JOIN dm_channels d ON d.channel_id = c.id
CROSS JOIN LATERAL (SELECT CASE WHEN c.kind = 'dm' THEN USER_ID IN (d.user_a, d.user_b)
                                ELSE gm.role IS NOT NULL END AS visible) v"""
CHANNEL_ACCESS_FROM = fill(_CHANNEL_ACCESS_FROM, {"USER_ID": "$2"})  # the user as $2
CHANNEL_FOR_MEMBER_SQL = f"SELECT c.*, gm.role, v.visible FROM {CHANNEL_ACCESS_FROM} WHERE c.id = $1"
# The events of one channel (CHANNEL) after AFTER that `sync` answers with, LIMIT at most,
# when VISIBLE: written once for both statements below.
_SYNC_EVENTS = """LEFT JOIN LATERAL (
    SELECT ev.seq, ev.kind, ev.payload::text AS payload FROM channel_events ev
    WHERE VISIBLE AND ev.channel_id = CHANNEL AND ev.seq > AFTER
    ORDER BY ev.seq LIMIT $3
) e ON true"""
# `sync` for one channel ($1) in one statement: whether the caller may see it, its last seq,
# and up to $3 of its events after $4 (none when it may not). One row per event, or one row
# with no event. (One statement for all the channels at once, through unnest and a window for
# the budget, cost Postgres about 1 ms per call: each call was planned again.)
SYNC_SQL = f"""
SELECT v.visible, c.last_seq, e.seq, e.kind, e.payload
FROM {CHANNEL_ACCESS_FROM}
{fill(_SYNC_EVENTS, {"VISIBLE": "v.visible", "CHANNEL": "c.id", "AFTER": "$4"})}
WHERE c.id = $1
ORDER BY e.seq
"""
# `sync` for the channels of several calls in one statement (a reconnect storm): pair $1[i]
# is channel $2[i] for user $4[i] after seq $5[i], with up to $3 events each; the rows of
# SYNC_SQL with their pair, none for a channel that does not exist. The budget of each call
# is applied to its pairs afterwards (SyncAnswer), so no window has to be planned.
SYNC_MANY_SQL = f"""
SELECT b.i, a.visible, a.last_seq, e.seq, e.kind, e.payload
FROM unnest($1::int[], $2::bigint[], $4::text[], $5::bigint[]) AS b(i, channel_id, user_id, after)
CROSS JOIN LATERAL (
    SELECT v.visible, c.last_seq FROM {fill(_CHANNEL_ACCESS_FROM, {"USER_ID": "b.user_id"})}
    WHERE c.id = b.channel_id
) a
{fill(_SYNC_EVENTS, {"VISIBLE": "a.visible", "CHANNEL": "b.channel_id", "AFTER": "b.after"})}
ORDER BY b.i, e.seq
"""

_str_list = msgspec.json.Decoder(list[str])
_guild_list = msgspec.json.Decoder(list[schemas.GuildSummary])
_channel_list = msgspec.json.Decoder(list[schemas.Channel])


def _ready_reply(user: schemas.UserRef, row: asyncpg.Record) -> schemas.ReadyReply:
    friends = _str_list.decode(row["friends"])
    contacts = list(dict.fromkeys(friends + _str_list.decode(row["co_members"])))[:MAX_CONTACTS]
    return schemas.ReadyReply(
        user=user, guilds=_guild_list.decode(row["guilds"]), channels=_channel_list.decode(row["channels"]),
        friend_ids=friends, contact_ids=contacts, presence_guild_ids=_str_list.decode(row["small"]),
    )


class _NewMessage(NamedTuple):
    """One message for chat_create_messages, in the order of its array parameters."""
    user_id: str
    user_name: str
    channel_id: int
    nonce: str
    content: str
    attachments: str  # JSON
    embeds: str  # JSON
    mentions: str  # JSON array
    reply_to: int | None
    created_at: datetime
    payload: str  # JSON
    event_id: uuid.UUID


class Store:
    def __init__(self, db: Database, *, send_batch_max: int = 64, send_batches_inflight: int = 1) -> None:
        self.db = db
        self._sends: GroupCommit[_NewMessage, asyncpg.Record] = GroupCommit(
            self._create_messages, name="message_send", max_batch=send_batch_max, max_inflight=send_batches_inflight)

    # -- users ---------------------------------------------------------------------------
    @staticmethod
    async def ensure_user(conn: asyncpg.Connection, user: schemas.UserRef) -> None:
        await conn.execute(
            "INSERT INTO users (id, name) VALUES ($1, $2) "
            "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name WHERE users.name <> EXCLUDED.name",
            user.id, user.name,
        )

    async def ready(self, user: schemas.UserRef) -> schemas.ReadyReply:
        """Everything ``ready`` carries, in one statement (one round trip): the user
        recorded, their guilds, channels, mutual friends, the guilds small enough for
        presence broadcasts and the co-members whose presence ``ready`` shows."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(READY_SQL, user.id, user.name, PRESENCE_GUILD_MAX, MAX_CONTACTS)
        return _ready_reply(user, row)

    async def ready_many(self, users: list[schemas.UserRef]) -> list[schemas.ReadyReply]:
        """``ready`` for several users, in one statement; in the order given."""
        if not users:
            return []
        async with self.db.connection() as conn:
            rows = await conn.fetch(READY_MANY_SQL, [u.id for u in users], [u.name for u in users],
                                    PRESENCE_GUILD_MAX, MAX_CONTACTS)
        by_id = {row["user_id"]: row for row in rows}
        return [_ready_reply(user, by_id[user.id]) for user in users]

    # -- access --------------------------------------------------------------------------
    @staticmethod
    async def channel_for_member(conn: asyncpg.Connection, user_id: str, channel_id: str) -> tuple[Any, str | None]:
        """The channel row and the caller's guild role (None for DMs); NotFound when the
        channel does not exist or the caller cannot see it (CHANNEL_ACCESS_FROM)."""
        row = await conn.fetchrow(CHANNEL_FOR_MEMBER_SQL, _id(channel_id, "channel"), user_id)
        if row is None or not row["visible"]:
            raise NotFound("channel not found")
        return row, None if row["kind"] == "dm" else row["role"]

    async def channel_access(self, user: schemas.UserRef, channel_id: str) -> schemas.Channel:
        async with self.db.connection() as conn:
            row, _ = await self.channel_for_member(conn, user.id, channel_id)
        return channel_from_row(row)

    # -- messages ------------------------------------------------------------------------
    async def find_by_nonce(self, conn: asyncpg.Connection, author_id: str, nonce: str) -> schemas.Message | None:
        row = await conn.fetchrow(
            f"SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.author_id "
            "WHERE m.author_id = $1 AND m.nonce = $2", author_id, nonce)
        return message_from_row(row) if row else None

    async def create_message(self, req: schemas.SendMessage, content: str) -> tuple[schemas.Message, bool]:
        """Store a message, its event in the channel log and its outbox entry
        (``chat_create_message``, migration 0003), grouped with the messages sent at the
        same moment into one call and one commit (``chat_create_messages``, 0004);
        (message, duplicate)."""
        cid = _id(req.channel_id, "channel")
        reply_to = _id(req.reply_to, "message") if req.reply_to is not None else None
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # the precision clients see
        msg = schemas.Message(
            id="0", channel_id=str(cid), seq=0, author=req.user, content=content,
            nonce=req.nonce, attachments=req.attachments, embeds=req.embeds, mentions=req.mentions,
            reply_to=str(reply_to) if reply_to else None, created_at=iso(now) or "",
        )
        payload = msgspec.json.encode({"channel_id": str(cid), "seq": 0, "message": msg}).decode()
        row = await self._sends.submit(_NewMessage(
            req.user.id, req.user.name, cid, req.nonce, content, msgspec.json.encode(req.attachments).decode(),
            msgspec.json.encode(req.embeds).decode(), msgspec.json.encode(req.mentions).decode(), reply_to, now,
            payload, uuid.uuid4()))
        status = row["o_status"]
        if status == "ok":
            msg.id, msg.seq = str(row["o_message_id"]), int(row["o_seq"])
            return msg, False
        if status == "duplicate":
            async with self.db.connection() as conn:
                existing = await self.find_by_nonce(conn, req.user.id, req.nonce)
            if existing is None:  # pragma: no cover - the row was just seen
                raise Unavailable("message store: retry")
            return existing, True
        if status == "timed_out":
            raise Forbidden(f"you are timed out in this guild until {iso(row['o_until'])}")
        if status == "not_found":
            raise NotFound(row["o_detail"])
        raise Invalid(row["o_detail"])

    async def _create_messages(self, batch: list[_NewMessage]) -> list[asyncpg.Record]:
        cols = list(zip(*batch, strict=True))
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM chat_create_messages($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], "
                "$6::jsonb[], $7::jsonb[], $8::jsonb[], $9::bigint[], $10::timestamptz[], $11::jsonb[], $12::uuid[], "
                "$13)", *(list(c) for c in cols), subjects.message_created())
        out: list[asyncpg.Record | None] = [None] * len(batch)
        for r in rows:
            out[r["o_i"] - 1] = r
        if any(r is None for r in out):
            raise RuntimeError("chat_create_messages: a message without a status")
        return out  # type: ignore[return-value]

    @staticmethod
    async def check_not_timed_out(conn: asyncpg.Connection, channel: Any, user_id: str) -> None:
        if channel["guild_id"] is None:
            return
        until = await conn.fetchval(
            "SELECT until FROM guild_timeouts WHERE guild_id = $1 AND user_id = $2 AND until > now()",
            channel["guild_id"], user_id)
        if until is not None:
            raise Forbidden(f"you are timed out in this guild until {iso(until)}")

    @staticmethod
    async def append_event(conn: asyncpg.Connection, channel_id: int, seq: int, kind: str,
                           message_id: int, payload: dict[str, Any]) -> None:
        body = msgspec.json.encode(payload).decode()
        await conn.execute(
            "INSERT INTO channel_events (channel_id, seq, kind, message_id, payload) VALUES ($1, $2, $3, $4, $5::jsonb)",
            channel_id, seq, kind, message_id, body)
        event_id = uuid.uuid4()
        envelope = msgspec.json.encode({"event_id": str(event_id), "event": kind, **payload}).decode()
        await conn.execute(
            "INSERT INTO outbox (event_id, subject, payload) VALUES ($1, $2, $3::jsonb)",
            event_id, subjects.domain_event(kind.replace(":", ".")), envelope)

    async def history(self, req: schemas.HistoryRequest) -> list[schemas.Message]:
        limit = max(1, min(100, req.limit))
        async with self.db.connection() as conn:
            row, _ = await self.channel_for_member(conn, req.user.id, req.channel_id)
            cid = row["id"]
            base = (f"SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.author_id "
                    "WHERE m.channel_id = $1 AND m.deleted_at IS NULL ")
            if req.after_seq is not None:
                rows = await conn.fetch(base + "AND m.seq > $2 ORDER BY m.seq ASC LIMIT $3",
                                        cid, req.after_seq, limit)
            elif req.before_seq is not None:
                rows = await conn.fetch(base + "AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3",
                                        cid, req.before_seq, limit)
                rows = list(reversed(rows))
            else:
                rows = list(reversed(await conn.fetch(base + "ORDER BY m.seq DESC LIMIT $2", cid, limit)))
        return [message_from_row(r) for r in rows]


    # -- edit / delete -----------------------------------------------------------------
    async def _locked_message(self, conn: asyncpg.Connection, channel_id: int, message_id: str) -> Any:
        row = await conn.fetchrow(
            f"SELECT {MESSAGE_COLUMNS}, m.deleted_at FROM messages m JOIN users u ON u.id = m.author_id "
            "WHERE m.id = $1 AND m.channel_id = $2 FOR UPDATE OF m", _id(message_id, "message"), channel_id)
        if row is None:
            raise NotFound("message not found")
        return row

    async def edit_message(self, user: schemas.UserRef, channel_id: str, message_id: str,
                           content: str) -> tuple[schemas.Message, int]:
        async with self.db.transaction() as conn:
            chan, _role = await self.channel_for_member(conn, user.id, channel_id)
            row = await self._locked_message(conn, chan["id"], message_id)
            if row["deleted_at"] is not None:
                raise Conflict("message was deleted")
            await self.check_not_timed_out(conn, chan, user.id)
            if row["author_id"] != user.id:
                raise Forbidden("only the author can edit a message")
            seq = await self._next_seq(conn, chan["id"])
            edited = await conn.fetchval(
                "UPDATE messages SET content = $2, edited_at = now() WHERE id = $1 RETURNING edited_at",
                row["id"], content)
            msg = message_from_row(row)
            msg.content = content
            msg.edited_at = iso(edited)
            await self.append_event(conn, chan["id"], seq, "message:updated", row["id"],
                                    {"channel_id": str(chan["id"]), "seq": seq, "message": msg})
        return msg, seq

    async def delete_message(self, user: schemas.UserRef, channel_id: str, message_id: str) -> tuple[str, int]:
        async with self.db.transaction() as conn:
            chan, role = await self.channel_for_member(conn, user.id, channel_id)
            row = await self._locked_message(conn, chan["id"], message_id)
            if row["deleted_at"] is not None:
                raise NotFound("message not found")
            moderator = role is not None and ROLE_RANK[role] >= ROLE_RANK["moderator"]
            if row["author_id"] != user.id and not moderator:
                raise Forbidden("only the author or a moderator can delete a message")
            seq = await self._next_seq(conn, chan["id"])
            await conn.execute("UPDATE messages SET deleted_at = now(), content = '' WHERE id = $1", row["id"])
            # What was deleted stays deleted: earlier log entries lose their text too.
            await conn.execute(
                "UPDATE channel_events SET payload = jsonb_set(payload, '{message,content}', '\"\"') "
                "WHERE channel_id = $1 AND message_id = $2 AND kind <> 'message:deleted'",
                chan["id"], row["id"])
            mid = str(row["id"])
            await self.append_event(conn, chan["id"], seq, "message:deleted", row["id"],
                                    {"channel_id": str(chan["id"]), "seq": seq, "message_id": mid})
        return mid, seq

    @staticmethod
    async def _next_seq(conn: asyncpg.Connection, channel_id: int) -> int:
        return int(await conn.fetchval(
            "UPDATE channels SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq", channel_id))

    # -- direct messages ------------------------------------------------------------------
    async def open_dm(self, user: schemas.UserRef, recipient_id: str) -> tuple[str, bool]:
        """The DM channel of the two users, created when missing; (channel_id, created)."""
        if recipient_id == user.id:
            raise Invalid("recipient_id: cannot send a DM to yourself")
        a, b = sorted((user.id, recipient_id))
        async with self.db.connection() as conn:
            await self.ensure_user(conn, user)
            existing = await conn.fetchval("SELECT channel_id FROM dm_channels WHERE user_a = $1 AND user_b = $2", a, b)
            if existing is not None:
                return str(existing), False
            if not await conn.fetchval("SELECT 1 FROM users WHERE id = $1", recipient_id):
                raise NotFound("user not found")
            allowed = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM guild_members x JOIN guild_members y ON x.guild_id = y.guild_id "
                "               WHERE x.user_id = $1 AND y.user_id = $2) "
                "OR (EXISTS (SELECT 1 FROM friendships WHERE user_id = $1 AND friend_id = $2) "
                "    AND EXISTS (SELECT 1 FROM friendships WHERE user_id = $2 AND friend_id = $1))",
                user.id, recipient_id)
            if not allowed:
                raise Forbidden("you can message users you share a guild with or your friends")
            async with conn.transaction():
                cid = await conn.fetchval("INSERT INTO channels (guild_id, name, kind) VALUES (NULL, $1, 'dm') RETURNING id",
                                          f"{a},{b}")
                inserted = await conn.fetchval(
                    "INSERT INTO dm_channels (channel_id, user_a, user_b) VALUES ($1, $2, $3) "
                    "ON CONFLICT (user_a, user_b) DO NOTHING RETURNING channel_id", cid, a, b)
                if inserted is None:
                    raise asyncpg.UniqueViolationError("dm exists")  # rolls back the spare channel
            return str(cid), True

    async def open_dm_retrying(self, user: schemas.UserRef, recipient_id: str) -> tuple[str, bool]:
        try:
            return await self.open_dm(user, recipient_id)
        except asyncpg.UniqueViolationError:
            return await self.open_dm(user, recipient_id)  # lost a race: the other one exists now

    # -- sync ------------------------------------------------------------------------------
    async def sync(self, user: schemas.UserRef, channels: dict[str, int], page: int, budget: int,
                   max_bytes: int = 2**62) -> SyncAnswer:
        """Every event after each given seq, oldest first, ``page`` per channel at most and
        ``budget`` in all (channels in the order given), their payloads ``max_bytes`` in all
        (one event at least); ``complete`` is false where more remain. One statement per
        channel (SYNC_SQL)."""
        answer = SyncAnswer(page, budget, max_bytes)
        async with self.db.connection() as conn:
            for channel_id, after in channels.items():
                try:
                    rows = await conn.fetch(SYNC_SQL, _id(channel_id, "channel"), user.id, answer.limit(), after)
                except NotFound as exc:
                    answer.error(channel_id, exc)
                    continue
                answer.channel(channel_id, after, rows)
        return answer

    async def sync_many(self, calls: list[tuple[schemas.UserRef, dict[str, int]]], page: int, budget: int,
                        max_bytes: int = 2**62) -> list[SyncAnswer]:
        """``sync`` for several calls in one statement (SYNC_MANY_SQL); in the order given,
        each answered as ``sync`` answers it. A call with more channels than its budget
        could fill twice over goes alone, as ``sync``: the statement fetches up to ``page``
        events for every channel before each call's budget is applied."""
        limit = SyncAnswer(page, budget, max_bytes).limit()  # what every call's first channel may have
        alone = [len(channels) * limit > 2 * budget for _, channels in calls]
        pair: dict[tuple[int, str], int] = {}  # (call, channel) -> its place in the statement's arrays
        cids: list[int] = []
        users: list[str] = []
        afters: list[int] = []
        for k, ((user, channels), skip) in enumerate(zip(calls, alone, strict=True)):
            for channel_id, after in channels.items():
                cid = _valid_id(channel_id)
                if skip or cid is None:
                    continue
                pair[k, channel_id] = len(cids)
                cids.append(cid)
                users.append(user.id)
                afters.append(after)
        rows: dict[int, list[asyncpg.Record]] = {}
        if cids:
            async with self.db.connection() as conn:
                for row in await conn.fetch(SYNC_MANY_SQL, list(range(len(cids))), cids, limit, users, afters):
                    rows.setdefault(row["i"], []).append(row)
        out: list[SyncAnswer] = []
        for k, ((user, channels), skip) in enumerate(zip(calls, alone, strict=True)):
            if skip:
                out.append(await self.sync(user, channels, page, budget, max_bytes))
                continue
            answer = SyncAnswer(page, budget, max_bytes)
            for channel_id, after in channels.items():
                if (k, channel_id) in pair:
                    answer.channel(channel_id, after, rows.get(pair[k, channel_id], []))
                else:
                    answer.error(channel_id, NotFound("channel not found"))
            out.append(answer)
        return out


class SyncAnswer:
    """One `sync` call's answer, channel by channel in the call's order: its events cut to
    ``page`` per channel, ``budget`` in all and ``max_bytes`` of payload in all (the first
    event always goes, so a call makes progress); ``complete`` false where more remain."""

    def __init__(self, page: int, budget: int, max_bytes: int) -> None:
        self.page = page
        self.budget = budget
        self.room = max_bytes  # payload bytes left
        self.taken = 0  # events in the answer so far
        self.cut = False  # events left out for want of room
        self.channels: dict[str, schemas.SyncChannel] = {}

    def limit(self) -> int:
        """Events the next channel may have at most, before its payloads are measured."""
        return 0 if self.cut else max(0, min(self.page, self.budget - self.taken))

    def error(self, channel_id: str, exc: NotFound) -> None:
        self.channels[channel_id] = _sync_error(exc)

    def channel(self, channel_id: str, after: int, rows: list[asyncpg.Record]) -> None:
        """``rows``: SYNC_SQL's for the channel (none: it does not exist)."""
        if not rows or not rows[0]["visible"]:
            self.error(channel_id, NotFound("channel not found"))
            return
        events: list[msgspec.Raw] = []
        last = None
        for r in rows[:self.limit()] if rows[0]["seq"] is not None else ():
            event = f'{{"event":"{r["kind"]}",'.encode() + r["payload"].encode()[1:]
            if len(event) > self.room and self.taken:
                self.cut = True
                break
            self.room -= len(event)
            self.taken += 1
            events.append(msgspec.Raw(event))
            last = int(r["seq"])
        last_seq = int(rows[0]["last_seq"])
        complete = last >= last_seq if last is not None else after >= last_seq
        self.channels[channel_id] = schemas.SyncChannel(events=events, complete=complete, last_seq=last_seq)


def _valid_id(value: str) -> int | None:
    try:
        return _id(value, "channel")
    except NotFound:
        return None


def _sync_error(exc: NotFound) -> schemas.SyncChannel:
    return schemas.SyncChannel(events=[], complete=True, error=schemas.ErrorBody(code=exc.code, message=exc.message))


__all__ = ["ROLE_RANK", "Conflict", "Store", "SyncAnswer", "Unavailable"]
