"""What others see of a user's presence (pure)."""

from __future__ import annotations

STATUSES = ("online", "idle", "dnd", "invisible")


def visible_status(chosen: str | None, sessions: int) -> str:
    """``offline`` without sessions or when invisible, else the chosen status."""
    if sessions <= 0:
        return "offline"
    chosen = chosen or "online"
    return "offline" if chosen == "invisible" else chosen


def audience_rooms(guild_ids: list[str], friend_ids: list[str]) -> tuple[list[str], list[str]]:
    """(guild ids, friend ids) without duplicates, in a stable order."""
    return sorted(set(guild_ids)), sorted(set(friend_ids))
