"""Moderation's Postgres adapter: each action, its checks and its audit row commit together.

The rows of the caller and the target in ``guild_members`` are locked for the transaction
(in a fixed order), so a concurrent role change or second action cannot slip between the
permission check and the write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from libs.db.database import Database
from libs.errors import NotFound
from services.moderation.domain import rules
from services.moderation.domain.rules import Action


@dataclass(frozen=True)
class Outcome:
    """A committed action: ``removed`` when a membership was deleted, ``channel_ids`` of
    the guild (whose rooms the target leaves and where ``member:removed`` goes)."""

    action: Action
    guild_id: str
    target_id: str
    reason: str | None
    until: str | None = None
    removed: bool = False
    channel_ids: list[str] = field(default_factory=list)


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


class ModerationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def kick(self, actor_id: str, guild_id: str, target_id: str, reason: str | None) -> Outcome:
        gid = rules.parse_guild_id(guild_id)
        async with self.db.transaction() as conn:
            actor_role, target_role = await self._roles(conn, gid, actor_id, target_id)
            role = rules.check_actor(actor_role)
            rules.check_target(Action.KICK, actor_id, role, target_id, target_role,
                               target_exists=target_role is not None)
            await self._remove_member(conn, gid, target_id)
            channel_ids = await self._channel_ids(conn, gid)
            await self._audit(conn, gid, actor_id, Action.KICK, target_id, reason, {"role": target_role})
        return Outcome(Action.KICK, guild_id, target_id, reason, removed=True, channel_ids=channel_ids)

    async def ban(self, actor_id: str, guild_id: str, target_id: str, reason: str | None,
                  duration_s: int | None) -> Outcome:
        gid = rules.parse_guild_id(guild_id)
        async with self.db.transaction() as conn:
            actor_role, target_role = await self._roles(conn, gid, actor_id, target_id)
            role = rules.check_actor(actor_role)
            exists = target_role is not None or bool(
                await conn.fetchval("SELECT 1 FROM users WHERE id = $1", target_id))
            rules.check_target(Action.BAN, actor_id, role, target_id, target_role, target_exists=exists)
            removed = target_role is not None
            if removed:
                await self._remove_member(conn, gid, target_id)
            until = await conn.fetchval(
                "INSERT INTO bans (guild_id, user_id, reason, until, created_by) "
                "VALUES ($1, $2, $3, CASE WHEN $4::int IS NULL THEN NULL "
                "                         ELSE now() + $4::int * interval '1 second' END, $5) "
                "ON CONFLICT (guild_id, user_id) DO UPDATE SET reason = EXCLUDED.reason, "
                "  until = EXCLUDED.until, created_by = EXCLUDED.created_by, created_at = now() "
                "RETURNING until", gid, target_id, reason, duration_s, actor_id)
            channel_ids = await self._channel_ids(conn, gid) if removed else []
            await self._audit(conn, gid, actor_id, Action.BAN, target_id, reason,
                              {"duration_s": duration_s, "until": iso(until), "was_member": removed,
                               "role": target_role})
        return Outcome(Action.BAN, guild_id, target_id, reason, until=iso(until), removed=removed,
                       channel_ids=channel_ids)

    async def unban(self, actor_id: str, guild_id: str, target_id: str) -> Outcome:
        gid = rules.parse_guild_id(guild_id)
        async with self.db.transaction() as conn:
            actor_role, _ = await self._roles(conn, gid, actor_id, target_id)
            rules.check_actor(actor_role)
            active = await conn.fetchval(
                "DELETE FROM bans WHERE guild_id = $1 AND user_id = $2 "
                "RETURNING (until IS NULL OR until > now())", gid, target_id)
            if not active:
                raise NotFound("ban not found")  # rolls back: an expired ban row stays as it was
            await self._audit(conn, gid, actor_id, Action.UNBAN, target_id, None, {})
        return Outcome(Action.UNBAN, guild_id, target_id, None)

    async def timeout(self, actor_id: str, guild_id: str, target_id: str, reason: str | None,
                      duration_s: int) -> Outcome:
        gid = rules.parse_guild_id(guild_id)
        async with self.db.transaction() as conn:
            actor_role, target_role = await self._roles(conn, gid, actor_id, target_id)
            role = rules.check_actor(actor_role)
            rules.check_target(Action.TIMEOUT, actor_id, role, target_id, target_role,
                               target_exists=target_role is not None)
            until = await conn.fetchval(
                "INSERT INTO guild_timeouts (guild_id, user_id, until, reason, created_by) "
                "VALUES ($1, $2, now() + $3::int * interval '1 second', $4, $5) "
                "ON CONFLICT (guild_id, user_id) DO UPDATE SET until = EXCLUDED.until, "
                "  reason = EXCLUDED.reason, created_by = EXCLUDED.created_by, created_at = now() "
                "RETURNING until", gid, target_id, duration_s, reason, actor_id)
            await self._audit(conn, gid, actor_id, Action.TIMEOUT, target_id, reason,
                              {"duration_s": duration_s, "until": iso(until), "role": target_role})
        return Outcome(Action.TIMEOUT, guild_id, target_id, reason, until=iso(until))

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    async def _roles(conn: asyncpg.Connection, gid: int, actor_id: str,
                     target_id: str) -> tuple[str | None, str | None]:
        """The roles of actor and target (None: not a member), their rows locked."""
        rows = await conn.fetch(
            "SELECT user_id, role FROM guild_members WHERE guild_id = $1 AND user_id = ANY($2::text[]) "
            "ORDER BY user_id FOR UPDATE", gid, sorted({actor_id, target_id}))
        roles = {r["user_id"]: r["role"] for r in rows}
        return roles.get(actor_id), roles.get(target_id)

    @staticmethod
    async def _remove_member(conn: asyncpg.Connection, gid: int, user_id: str) -> None:
        await conn.execute("DELETE FROM guild_members WHERE guild_id = $1 AND user_id = $2", gid, user_id)

    @staticmethod
    async def _channel_ids(conn: asyncpg.Connection, gid: int) -> list[str]:
        rows = await conn.fetch("SELECT id FROM channels WHERE guild_id = $1 ORDER BY id", gid)
        return [str(r["id"]) for r in rows]

    @staticmethod
    async def _audit(conn: asyncpg.Connection, gid: int, actor_id: str, action: Action, target_id: str,
                     reason: str | None, details: dict[str, Any]) -> None:
        await conn.execute(
            "INSERT INTO audit_log (guild_id, actor_id, action, target_id, reason, details) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
            gid, actor_id, action.value, target_id, reason,
            orjson.dumps({k: v for k, v in details.items() if v is not None}).decode())
