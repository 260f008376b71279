"""Gateway side of the mod events: ``mod:kick``, ``mod:ban``, ``mod:unban``, ``mod:timeout``.

Each one is validated and rate-limited by the SocketGateway wrapper, then forwarded to
the moderation service, which checks ranks, commits, makes every gateway node act on the
target's sockets and emits ``moderation`` / ``member:removed``. A ban is per guild, so it
never refuses a connection: no connect check is added here.
"""

from __future__ import annotations

from typing import Any

from libs.bus import schemas
from libs.bus.subjects import ModerationOps
from services.gateway.adapters.sessions import Session
from services.gateway.domain import payloads as p
from services.gateway.transport.socket_events import SocketGateway

Ack = dict[str, Any]


def register(gw: SocketGateway) -> None:
    """Add this feature's client events, connect checks and disconnect hooks to gw."""

    async def kick(s: Session, m: p.ModTarget) -> Ack:
        await gw.request("moderation", ModerationOps.KICK, schemas.KickRequest(
            user=gw.user(s), guild_id=m.guild_id, user_id=m.user_id, reason=m.reason),
            schemas.ModerationReply)
        return {"ok": True}

    async def ban(s: Session, m: p.ModBan) -> Ack:
        await gw.request("moderation", ModerationOps.BAN, schemas.BanRequest(
            user=gw.user(s), guild_id=m.guild_id, user_id=m.user_id, reason=m.reason,
            duration_s=m.duration_s), schemas.ModerationReply)
        return {"ok": True}

    async def unban(s: Session, m: p.ModTarget) -> Ack:
        await gw.request("moderation", ModerationOps.UNBAN, schemas.UnbanRequest(
            user=gw.user(s), guild_id=m.guild_id, user_id=m.user_id), schemas.ModerationReply)
        return {"ok": True}

    async def timeout(s: Session, m: p.ModTimeout) -> Ack:
        await gw.request("moderation", ModerationOps.TIMEOUT, schemas.TimeoutRequest(
            user=gw.user(s), guild_id=m.guild_id, user_id=m.user_id, duration_s=m.duration_s,
            reason=m.reason), schemas.ModerationReply)
        return {"ok": True}

    gw.add_event("mod:kick", p.ModTarget, kick, "mod_kick")
    gw.add_event("mod:ban", p.ModBan, ban, "mod_ban")
    gw.add_event("mod:unban", p.ModTarget, unban, "mod_unban")
    gw.add_event("mod:timeout", p.ModTimeout, timeout, "mod_timeout")
