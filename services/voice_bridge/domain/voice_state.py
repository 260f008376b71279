"""Voice channel state rules: pure functions over one user's voice record.

A user is in at most one voice channel. The record says which channel, the client's
mute/deaf flags, and which gateway session (and node) joined: that session owns it, and
its end ends the user's voice connection. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from libs.errors import Conflict, Invalid

ROOM_PREFIX = "voice-"


class VoiceRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One user's voice state as stored (one per user)."""

    user_id: str
    name: str
    channel_id: str
    guild_id: str
    session_id: str
    node: str
    self_mute: bool = False
    self_deaf: bool = False
    joined_at: float = 0.0


@dataclass(frozen=True)
class StateChange:
    """A ``voice:state`` to emit to the room of ``record.channel_id``."""

    record: VoiceRecord
    connected: bool


def room_name(channel_id: str) -> str:
    return f"{ROOM_PREFIX}{channel_id}"


def channel_of_room(room: str) -> str | None:
    """The channel id of a LiveKit room this service named, or None."""
    if not room.startswith(ROOM_PREFIX) or len(room) == len(ROOM_PREFIX):
        return None
    return room[len(ROOM_PREFIX):]


def check_joinable(kind: str, guild_id: str | None) -> str:
    """The guild id of a channel a member may join for voice; Invalid otherwise."""
    if kind == "dm" or guild_id is None:
        raise Invalid("channel_id: a DM channel has no voice")
    if kind != "voice":
        raise Invalid("channel_id: not a voice channel")
    return guild_id


def state_payload(rec: VoiceRecord, connected: bool) -> dict[str, object]:
    return {"channel_id": rec.channel_id, "user_id": rec.user_id, "self_mute": rec.self_mute,
            "self_deaf": rec.self_deaf, "connected": connected}


def join(prev: VoiceRecord | None, new: VoiceRecord) -> list[StateChange]:
    """Changes to announce when ``new`` replaces ``prev``: leaving the old channel first
    when the user moves, then being connected in the new one."""
    changes = []
    if prev is not None and prev.channel_id != new.channel_id:
        changes.append(StateChange(prev, False))
    changes.append(StateChange(new, True))
    return changes


def update(rec: VoiceRecord | None, self_mute: bool | None, self_deaf: bool | None) -> VoiceRecord:
    """The record with new client flags (None keeps a flag); Conflict when not in voice."""
    if rec is None:
        raise Conflict("not in a voice channel")
    return msgspec.structs.replace(
        rec,
        self_mute=rec.self_mute if self_mute is None else self_mute,
        self_deaf=rec.self_deaf if self_deaf is None else self_deaf,
    )


def changed(old: VoiceRecord, new: VoiceRecord) -> bool:
    return (old.self_mute, old.self_deaf) != (new.self_mute, new.self_deaf)


def keepalive(rec: VoiceRecord | None, session_id: str) -> VoiceRecord:
    """A session may only keep alive the state it owns."""
    if rec is None or rec.session_id != session_id:
        raise Conflict("this session is not in a voice channel")
    return rec


def owned_by(rec: VoiceRecord | None, session_id: str) -> bool:
    return rec is not None and rec.session_id == session_id


def on_node(rec: VoiceRecord | None, node: str) -> bool:
    return rec is not None and rec.node == node


def left_room(rec: VoiceRecord | None, channel_id: str, event_at: float | None) -> bool:
    """Does a LiveKit "participant left ``channel_id``" event end this record?

    Not when the user has since moved to another channel, nor when the record was made
    after the event (a late webhook about an earlier connection). Webhook times have
    one-second resolution: an event in the same second as the join still counts.
    """
    if rec is None or rec.channel_id != channel_id:
        return False
    return event_at is None or event_at <= 0 or rec.joined_at < event_at + 1
