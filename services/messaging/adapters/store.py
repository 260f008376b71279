"""Messaging's Postgres adapter: every query of the chat domain lives here."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import asyncpg
import msgspec
import orjson

from libs.bus import schemas, subjects
from libs.db.database import Database
from libs.errors import Conflict, Forbidden, Invalid, NotFound
from services.messaging.adapters.rows import MESSAGE_COLUMNS, channel_from_row, message_from_row

ROLE_RANK = {"member": 0, "moderator": 1, "admin": 2, "owner": 3}


def _id(value: str, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise NotFound(f"{what} not found") from None
    if n <= 0 or n >= 2**63:
        raise NotFound(f"{what} not found")
    return n


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- users ---------------------------------------------------------------------------
    @staticmethod
    async def ensure_user(conn: asyncpg.Connection, user: schemas.UserRef) -> None:
        await conn.execute(
            "INSERT INTO users (id, name) VALUES ($1, $2) "
            "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name WHERE users.name <> EXCLUDED.name",
            user.id, user.name,
        )

    async def ready(self, user: schemas.UserRef) -> schemas.ReadyReply:
        async with self.db.connection() as conn:
            await self.ensure_user(conn, user)
            guild_rows = await conn.fetch(
                "SELECT g.id, g.name, gm.role FROM guild_members gm JOIN guilds g ON g.id = gm.guild_id "
                "WHERE gm.user_id = $1 ORDER BY g.id", user.id)
            channel_rows = await conn.fetch(
                "SELECT c.* FROM channels c JOIN guild_members gm ON gm.guild_id = c.guild_id "
                "WHERE gm.user_id = $1 "
                "UNION ALL "
                "SELECT c.* FROM channels c JOIN dm_channels d ON d.channel_id = c.id "
                "WHERE d.user_a = $1 OR d.user_b = $1 "
                "ORDER BY id", user.id)
        return schemas.ReadyReply(
            user=user,
            guilds=[schemas.GuildSummary(id=str(r["id"]), name=r["name"], role=r["role"]) for r in guild_rows],
            channels=[channel_from_row(r) for r in channel_rows],
        )

    # -- access --------------------------------------------------------------------------
    @staticmethod
    async def channel_for_member(conn: asyncpg.Connection, user_id: str, channel_id: str,
                                 *, lock: bool = False) -> tuple[Any, str | None]:
        """The channel row and the caller's guild role (None for DMs); NotFound when the
        channel does not exist or the caller cannot see it."""
        cid = _id(channel_id, "channel")
        row = await conn.fetchrow(
            "SELECT c.*, gm.role, d.user_a, d.user_b FROM channels c "
            "LEFT JOIN guild_members gm ON gm.guild_id = c.guild_id AND gm.user_id = $2 "
            "LEFT JOIN dm_channels d ON d.channel_id = c.id "
            "WHERE c.id = $1", cid, user_id)
        if row is None:
            raise NotFound("channel not found")
        if row["kind"] == "dm":
            if user_id not in (row["user_a"], row["user_b"]):
                raise NotFound("channel not found")
            return row, None
        if row["role"] is None:
            raise NotFound("channel not found")
        return row, row["role"]

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
        """Store a message and its log event in one transaction; (message, duplicate)."""
        async with self.db.connection() as conn:
            await self.ensure_user(conn, req.user)
            existing = await self.find_by_nonce(conn, req.user.id, req.nonce)
            if existing is not None:
                return existing, True
            try:
                async with conn.transaction():
                    msg = await self._insert_message(conn, req, content)
                return msg, False
            except asyncpg.UniqueViolationError:
                existing = await self.find_by_nonce(conn, req.user.id, req.nonce)
                if existing is None:
                    raise
                return existing, True

    async def _insert_message(self, conn: asyncpg.Connection, req: schemas.SendMessage,
                              content: str) -> schemas.Message:
        row, _role = await self.channel_for_member(conn, req.user.id, req.channel_id)
        if row["kind"] == "voice":
            raise Invalid("channel_id: cannot send messages to a voice channel")
        cid = row["id"]
        reply_to = None
        if req.reply_to is not None:
            reply_to = _id(req.reply_to, "message")
            ok = await conn.fetchval("SELECT 1 FROM messages WHERE id = $1 AND channel_id = $2", reply_to, cid)
            if not ok:
                raise NotFound("reply_to: message not found in this channel")
        if req.mentions:
            await self._check_mentions(conn, row, req.mentions)
        seq = await conn.fetchval("UPDATE channels SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq", cid)
        mrow = await conn.fetchrow(
            "INSERT INTO messages (channel_id, seq, author_id, nonce, content, attachments, embeds, mentions, reply_to) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, $9) "
            "RETURNING id, created_at",
            cid, seq, req.user.id, req.nonce, content,
            msgspec.json.encode(req.attachments).decode(), msgspec.json.encode(req.embeds).decode(),
            orjson.dumps(req.mentions).decode(), reply_to)
        msg = schemas.Message(
            id=str(mrow["id"]), channel_id=str(cid), seq=seq, author=req.user, content=content,
            nonce=req.nonce, attachments=req.attachments, embeds=req.embeds, mentions=req.mentions,
            reply_to=str(reply_to) if reply_to else None,
            created_at=mrow["created_at"].strftime("%Y-%m-%dT%H:%M:%S.") + f"{mrow['created_at'].microsecond // 1000:03d}Z",
        )
        await self.append_event(conn, cid, seq, "message:created", int(msg.id),
                                {"channel_id": str(cid), "seq": seq, "message": msg})
        return msg

    async def _check_mentions(self, conn: asyncpg.Connection, channel: Any, mentions: list[str]) -> None:
        if channel["kind"] == "dm":
            allowed = {channel["user_a"], channel["user_b"]}
            missing = [m for m in mentions if m not in allowed]
        else:
            rows = await conn.fetch(
                "SELECT user_id FROM guild_members WHERE guild_id = $1 AND user_id = ANY($2::text[])",
                channel["guild_id"], mentions)
            found = {r["user_id"] for r in rows}
            missing = [m for m in mentions if m not in found]
        if missing:
            raise Invalid(f"mentions: not members of this channel: {', '.join(missing[:5])}")

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

    # -- guilds --------------------------------------------------------------------------
    async def create_guild(self, user: schemas.UserRef, name: str) -> schemas.Guild:
        async with self.db.connection() as conn:
            await self.ensure_user(conn, user)
            async with conn.transaction():
                gid = await conn.fetchval("INSERT INTO guilds (name, owner_id) VALUES ($1, $2) RETURNING id",
                                          name, user.id)
                await conn.execute("INSERT INTO guild_members (guild_id, user_id, role) VALUES ($1, $2, 'owner')",
                                   gid, user.id)
                await conn.execute(
                    "INSERT INTO channels (guild_id, name, kind) VALUES ($1, 'general', 'text'), ($1, 'lounge', 'voice')",
                    gid)
            return await self._guild(conn, gid)

    async def _guild(self, conn: asyncpg.Connection, gid: int) -> schemas.Guild:
        g = await conn.fetchrow("SELECT * FROM guilds WHERE id = $1", gid)
        if g is None:
            raise NotFound("guild not found")
        chans = await conn.fetch("SELECT * FROM channels WHERE guild_id = $1 ORDER BY id", gid)
        members = await conn.fetch(
            "SELECT gm.user_id, u.name, gm.role FROM guild_members gm JOIN users u ON u.id = gm.user_id "
            "WHERE gm.guild_id = $1 ORDER BY gm.joined_at, gm.user_id", gid)
        return schemas.Guild(
            id=str(gid), name=g["name"], owner_id=g["owner_id"],
            channels=[channel_from_row(c) for c in chans],
            members=[schemas.Member(user_id=m["user_id"], name=m["name"], role=m["role"]) for m in members],
        )

    @staticmethod
    async def member_role(conn: asyncpg.Connection, gid: int, user_id: str) -> str | None:
        return await conn.fetchval("SELECT role FROM guild_members WHERE guild_id = $1 AND user_id = $2",
                                   gid, user_id)

    async def get_guild(self, user: schemas.UserRef, guild_id: str) -> schemas.Guild:
        gid = _id(guild_id, "guild")
        async with self.db.connection() as conn:
            if await self.member_role(conn, gid, user.id) is None:
                raise NotFound("guild not found")
            return await self._guild(conn, gid)

    async def create_invite(self, user: schemas.UserRef, guild_id: str) -> str:
        gid = _id(guild_id, "guild")
        async with self.db.connection() as conn:
            if await self.member_role(conn, gid, user.id) is None:
                raise NotFound("guild not found")
            code = secrets.token_urlsafe(8)
            await conn.execute("INSERT INTO invites (code, guild_id, created_by) VALUES ($1, $2, $3)",
                               code, gid, user.id)
        return code

    async def accept_invite(self, user: schemas.UserRef, code: str) -> tuple[schemas.Guild, bool]:
        """Join the invite's guild; (guild, newly_joined)."""
        async with self.db.connection() as conn:
            await self.ensure_user(conn, user)
            async with conn.transaction():
                gid = await conn.fetchval("UPDATE invites SET uses = uses + 1 WHERE code = $1 RETURNING guild_id", code)
                if gid is None:
                    raise NotFound("invite not found")
                banned = await conn.fetchval(
                    "SELECT 1 FROM bans WHERE guild_id = $1 AND user_id = $2 AND (until IS NULL OR until > now())",
                    gid, user.id)
                if banned:
                    raise Forbidden("you are banned from this guild")
                status = await conn.execute(
                    "INSERT INTO guild_members (guild_id, user_id, role) VALUES ($1, $2, 'member') "
                    "ON CONFLICT DO NOTHING", gid, user.id)
            return await self._guild(conn, gid), status.endswith(" 1")


__all__ = ["Store", "Conflict", "ROLE_RANK"]
