"""Bus messages of the presence service (sessions, status, typing, node liveness)."""

from __future__ import annotations

from libs.bus.schemas.core import Struct, UserRef

__all__ = [
    "Activity",
    "NodeHeartbeat",
    "Presence",
    "PresenceList",
    "PresenceQuery",
    "PresenceUpdate",
    "SessionClose",
    "SessionCloseMany",
    "SessionOpen",
    "SessionOpenMany",
    "SessionOpenManyReply",
    "SessionOpenReply",
    "TypingRequest",
]  # NodeSessions below


class Activity(Struct):
    name: str
    kind: str


class Presence(Struct):
    user_id: str
    status: str  # online | idle | dnd | offline (invisible is shown as offline)
    activity: Activity | None = None
    since: str | None = None


class SessionOpen(Struct):
    user: UserRef
    session_id: str
    node: str
    guild_ids: list[str] = []
    friend_ids: list[str] = []
    contact_ids: list[str] = []  # whose presence the new session wants in `ready`
    announce: bool = True  # False when a node re-registers sessions after an outage


class SessionOpenReply(Struct):
    presences: list[Presence]


class SessionClose(Struct):
    user_id: str
    session_id: str
    node: str


class SessionOpenMany(Struct):
    """Sessions a gateway opened while its previous batch was in flight (a connect burst):
    presence records them in one Redis round trip and answers each in order."""

    sessions: list[SessionOpen]


class SessionOpenManyReply(Struct):
    replies: list[SessionOpenReply]  # one per session, in the request's order


class SessionCloseMany(Struct):
    sessions: list[SessionClose]


class PresenceUpdate(Struct):
    user_id: str
    status: str
    activity: Activity | None = None


class TypingRequest(Struct):
    user_id: str
    channel_id: str


class NodeHeartbeat(Struct):
    node: str
    sessions: int
    interval_s: float


class PresenceQuery(Struct):
    user_ids: list[str]


class PresenceList(Struct):
    presences: list[Presence]


class NodeSessions(Struct):
    """A gateway node's full list of sessions (sent in chunks after ``presence_resync``):
    presence adds what it lacks and, on the ``final`` chunk, drops what the node no
    longer holds."""

    node: str
    generation: str
    sessions: list[SessionOpen]
    final: bool = False


__all__ += ["NodeSessions"]
