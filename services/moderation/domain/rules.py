"""Who may do what to whom in a guild (pure: no I/O).

Ranks are owner > admin > moderator > member. A moderator or above may kick, ban and time
out members of strictly lower rank; nobody can act on the owner or on themselves. Someone
who is not a member of the guild cannot see it: every refusal to them is ``not_found``.
"""

from __future__ import annotations

import html
import re
import unicodedata
from enum import Enum

from libs.errors import Forbidden, Invalid, NotFound

ROLE_RANK = {"member": 0, "moderator": 1, "admin": 2, "owner": 3}
MODERATOR_RANK = ROLE_RANK["moderator"]
MAX_REASON_CHARS = 512
MAX_DURATION_S = 10 * 365 * 24 * 3600

_ID_RE = re.compile(r"^[0-9]{1,19}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200b\ufeff]")


class Action(str, Enum):
    KICK = "kick"
    BAN = "ban"
    UNBAN = "unban"
    TIMEOUT = "timeout"

    @property
    def removes_member(self) -> bool:
        return self in (Action.KICK, Action.BAN)


def rank(role: str) -> int:
    return ROLE_RANK.get(role, -1)


def parse_guild_id(value: str) -> int:
    """A public guild id as its bigint key; anything else is a guild that does not exist."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise NotFound("guild not found")
    n = int(value)
    if n <= 0 or n >= 2**63:
        raise NotFound("guild not found")
    return n


def check_actor(actor_role: str | None) -> str:
    """The caller is a member of the guild with at least moderator rank; their role."""
    if actor_role is None:
        raise NotFound("guild not found")
    if rank(actor_role) < MODERATOR_RANK:
        raise Forbidden("only a moderator, an admin or the owner can moderate members")
    return actor_role


def check_target(action: Action, actor_id: str, actor_role: str, target_id: str,
                 target_role: str | None, *, target_exists: bool) -> None:
    """May ``actor`` (already passed :func:`check_actor`) do ``action`` to ``target``?

    ``target_role`` is None when the target is not a member; ``target_exists`` says
    whether they are a known user at all. Banning a non-member who exists is allowed (it
    keeps them out); kicking or timing out a non-member is ``not_found``.
    """
    if target_id == actor_id:
        raise Forbidden(f"you cannot {action.value} yourself")
    if target_role is None:
        if action is Action.BAN and target_exists:
            return
        raise NotFound("member not found" if action is not Action.BAN else "user not found")
    if target_role == "owner":
        raise Forbidden(f"the owner cannot be {_past(action)}")
    if rank(target_role) >= rank(actor_role):
        raise Forbidden(f"you can only {action.value} members of a lower role than yours")


def check_duration(duration_s: int | None, *, required: bool) -> None:
    if duration_s is None:
        if required:
            raise Invalid("duration_s: required")
        return
    if not (1 <= duration_s <= MAX_DURATION_S):
        raise Invalid(f"duration_s: must be between 1 and {MAX_DURATION_S}")


def clean_reason(reason: str | None) -> str | None:
    """The stored and displayed form of a reason: normalised plain text, markup escaped,
    at most 512 characters; None when nothing is left."""
    if reason is None:
        return None
    text = unicodedata.normalize("NFC", reason.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text).strip()[:MAX_REASON_CHARS]
    return html.escape(text, quote=False) if text else None


def _past(action: Action) -> str:
    return {Action.KICK: "kicked", Action.BAN: "banned", Action.UNBAN: "unbanned",
            Action.TIMEOUT: "timed out"}[action]
