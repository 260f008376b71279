"""Messaging's Postgres adapter for guilds, channels, invites, roles and friends."""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg

from libs.bus import schemas
from libs.db.database import Database
from libs.errors import Forbidden, NotFound
from services.messaging.adapters.rows import channel_from_row
from services.messaging.adapters.store import ROLE_RANK, Store, _id


class GuildStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.ensure_user = Store.ensure_user

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



    async def create_channel(self, user: schemas.UserRef, guild_id: str, name: str, kind: str) -> tuple[schemas.Channel, list[str]]:
        """A new channel (admin/owner only); returns it and the guild's member ids."""
        gid = _id(guild_id, "guild")
        async with self.db.connection() as conn:
            role = await self.member_role(conn, gid, user.id)
            if role is None:
                raise NotFound("guild not found")
            if ROLE_RANK[role] < ROLE_RANK["admin"]:
                raise Forbidden("only an admin or the owner can create channels")
            row = await conn.fetchrow("INSERT INTO channels (guild_id, name, kind) VALUES ($1, $2, $3) RETURNING *",
                                      gid, name, kind)
            members = [r["user_id"] for r in await conn.fetch("SELECT user_id FROM guild_members WHERE guild_id = $1", gid)]
        return channel_from_row(row), members

    async def set_role(self, user: schemas.UserRef, guild_id: str, target: str, role: str) -> schemas.Member:
        gid = _id(guild_id, "guild")
        async with self.db.transaction() as conn:
            mine = await self.member_role(conn, gid, user.id)
            if mine is None:
                raise NotFound("guild not found")
            theirs = await conn.fetchval(
                "SELECT role FROM guild_members WHERE guild_id = $1 AND user_id = $2 FOR UPDATE", gid, target)
            if theirs is None:
                raise NotFound("member not found")
            if ROLE_RANK[mine] < ROLE_RANK["admin"]:
                raise Forbidden("only an admin or the owner can change roles")
            if theirs == "owner" or target == user.id:
                raise Forbidden("the owner's role and your own cannot be changed")
            if mine == "admin" and (theirs == "admin" or role == "admin"):
                raise Forbidden("only the owner can appoint or change admins")
            await conn.execute("UPDATE guild_members SET role = $3 WHERE guild_id = $1 AND user_id = $2", gid, target, role)
            name = await conn.fetchval("SELECT name FROM users WHERE id = $1", target)
        return schemas.Member(user_id=target, name=name, role=role)

    # -- friends -------------------------------------------------------------------------
    async def friends(self, user: schemas.UserRef) -> dict[str, list[dict[str, Any]]]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT u.id, u.name, "
                " EXISTS (SELECT 1 FROM friendships f WHERE f.user_id = $1 AND f.friend_id = u.id) AS mine, "
                " EXISTS (SELECT 1 FROM friendships f WHERE f.user_id = u.id AND f.friend_id = $1) AS theirs "
                "FROM users u WHERE u.id IN (SELECT friend_id FROM friendships WHERE user_id = $1 "
                "                            UNION SELECT user_id FROM friendships WHERE friend_id = $1) "
                "ORDER BY u.id", user.id)
        out: dict[str, list[dict[str, Any]]] = {"friends": [], "incoming": [], "outgoing": []}
        for r in rows:
            key = "friends" if r["mine"] and r["theirs"] else ("outgoing" if r["mine"] else "incoming")
            out[key].append({"id": r["id"], "name": r["name"]})
        return out

    async def put_friend(self, user: schemas.UserRef, friend_id: str) -> str:
        """Send or accept a request; returns ``friends`` or ``pending``."""
        if friend_id == user.id:
            raise Forbidden("you cannot befriend yourself")
        async with self.db.connection() as conn:
            await self.ensure_user(conn, user)
            if not await conn.fetchval("SELECT 1 FROM users WHERE id = $1", friend_id):
                raise NotFound("user not found")
            await conn.execute("INSERT INTO friendships (user_id, friend_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                               user.id, friend_id)
            mutual = await conn.fetchval("SELECT 1 FROM friendships WHERE user_id = $1 AND friend_id = $2",
                                         friend_id, user.id)
        return "friends" if mutual else "pending"

    async def delete_friend(self, user: schemas.UserRef, friend_id: str) -> None:
        async with self.db.connection() as conn:
            status = await conn.execute(
                "DELETE FROM friendships WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)",
                user.id, friend_id)
        if status == "DELETE 0":
            raise NotFound("no such friend or request")
