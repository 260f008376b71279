"""This node's sockets: who each one is and which channels it is subscribed to."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.gateway import metrics


@dataclass(slots=True)
class Session:
    sid: str
    user_id: str
    name: str
    session_id: str
    ip: str
    channels: set[str] = field(default_factory=set)
    guilds: set[str] = field(default_factory=set)
    # Read-only after connect: frozensets (an empty one is shared, an empty set costs 216 bytes).
    friends: frozenset[str] = frozenset()
    presence_guilds: frozenset[str] = frozenset()  # guilds told about this user's presence
    connected_at: float = field(default_factory=time.time)


class SessionRegistry:
    def __init__(self) -> None:
        self.by_sid: dict[str, Session] = {}
        self.by_user: dict[str, set[str]] = {}

    def add(self, s: Session) -> None:
        self.by_sid[s.sid] = s
        self.by_user.setdefault(s.user_id, set()).add(s.sid)
        metrics.SESSIONS.set(len(self.by_user))

    def get(self, sid: str) -> Session | None:
        return self.by_sid.get(sid)

    def remove(self, sid: str) -> Session | None:
        s = self.by_sid.pop(sid, None)
        if s is not None:
            sids = self.by_user.get(s.user_id)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self.by_user[s.user_id]
        metrics.SESSIONS.set(len(self.by_user))
        return s

    def sids_of(self, user_id: str) -> list[str]:
        return list(self.by_user.get(user_id, ()))

    def __len__(self) -> int:
        return len(self.by_sid)
