"""Bus messages of the voice service."""

from __future__ import annotations

from libs.bus.schemas.core import Struct, UserRef


class VoiceState(Struct):
    """What clients see: the ``voice:state`` payload and ``voice_state`` in acks."""

    channel_id: str
    user_id: str
    self_mute: bool
    self_deaf: bool
    connected: bool


class LiveKitGrant(Struct):
    url: str
    room: str
    token: str


class VoiceJoinRequest(Struct):
    user: UserRef
    session_id: str
    node: str
    channel_id: str
    self_mute: bool = False
    self_deaf: bool = False


class VoiceJoinReply(Struct):
    livekit: LiveKitGrant
    voice_state: VoiceState
    keepalive_s: float = 600.0  # the gateway refreshes the state this often while the session lives


class VoiceUpdateRequest(Struct):
    """``keepalive``: refresh the state's TTL only, and only if ``session_id`` owns it."""

    user: UserRef
    session_id: str
    self_mute: bool | None = None
    self_deaf: bool | None = None
    keepalive: bool = False


class VoiceStateReply(Struct):
    voice_state: VoiceState


class VoiceLeaveRequest(Struct):
    user: UserRef
    session_id: str


class VoiceLeaveReply(Struct):
    left: bool  # False when the user was not in a voice channel (leave is idempotent)


class SessionRef(Struct):
    user_id: str
    session_id: str


class SessionsGone(Struct):
    """Published on ``subjects.presence_events()`` when the sessions of a gateway node
    are cleaned up. An explicitly empty ``sessions`` list means every session of ``node``."""

    node: str
    sessions: list[SessionRef]
