"""Bus messages of the moderation service."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from libs.bus.schemas.core import Struct, UserRef

__all__ = [
    "BanRequest",
    "KickRequest",
    "ModerationReply",
    "TimeoutRequest",
    "UnbanRequest",
]

# Bounds repeated from the client payloads: a request that reaches the service by another
# path is held to the same limits.
ModGuildId = Annotated[str, Meta(min_length=1, max_length=20)]
ModUserId = Annotated[str, Meta(min_length=1, max_length=64)]
ModReason = Annotated[str, Meta(max_length=512)]
ModDuration = Annotated[int, Meta(ge=1, le=10 * 365 * 24 * 3600)]


class KickRequest(Struct):
    """``user`` (the moderator) removes ``user_id`` from ``guild_id``; they may rejoin."""

    user: UserRef
    guild_id: ModGuildId
    user_id: ModUserId
    reason: ModReason | None = None


class BanRequest(Struct):
    """Remove ``user_id`` (member or not) and refuse their rejoining until ``duration_s``
    has passed (never, when it is None)."""

    user: UserRef
    guild_id: ModGuildId
    user_id: ModUserId
    reason: ModReason | None = None
    duration_s: ModDuration | None = None


class UnbanRequest(Struct):
    user: UserRef
    guild_id: ModGuildId
    user_id: ModUserId


class TimeoutRequest(Struct):
    """``user_id`` stays a member but cannot send in the guild for ``duration_s``."""

    user: UserRef
    guild_id: ModGuildId
    user_id: ModUserId
    duration_s: ModDuration
    reason: ModReason | None = None


class ModerationReply(Struct):
    """What was done: ``until`` (ISO 8601, UTC) for bans and timeouts, None when permanent;
    ``gateways`` is how many gateway nodes confirmed they acted."""

    action: str
    guild_id: str
    user_id: str
    until: str | None = None
    gateways: int = 0
