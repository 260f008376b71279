"""Every NATS subject of the system is built here, and nowhere else.

Layout:
  chat.svc.<service>.<op>          request/reply to a service (queue group "<service>")
  chat.gateway.<node>.control      commands to one gateway node (disconnect, leave rooms)
  chat.gateway.all.control         commands to every gateway node
  chat.node.heartbeat              gateway node heartbeats (presence watches them)
  chat.events.<kind>               durable domain events (JetStream stream CHAT_EVENTS)
"""

from __future__ import annotations

SERVICES = ("messaging", "presence", "voice", "moderation")

EVENTS_STREAM = "CHAT_EVENTS"
EVENTS_WILDCARD = "chat.events.>"


def service_request(service: str, op: str) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    return f"chat.svc.{service}.{op}"


def service_wildcard(service: str) -> str:
    return f"chat.svc.{service}.*"


def queue_group(service: str) -> str:
    return service


def gateway_control(node_id: str) -> str:
    return f"chat.gateway.{node_id}.control"


def gateway_broadcast() -> str:
    return "chat.gateway.all.control"


def node_heartbeat() -> str:
    return "chat.node.heartbeat"


def presence_events() -> str:
    """Presence announcements other services react to (a user's last session ended)."""
    return "chat.presence.events"


def domain_event(kind: str) -> str:
    """``message.created`` -> ``chat.events.message.created``."""
    return f"chat.events.{kind}"


def message_created() -> str:
    """Where messaging's outbox publishes each stored message (presence ends typing on it)."""
    return domain_event("message.created")


def metric_label(subject: str) -> str:
    """A bounded label for metrics: node ids are collapsed."""
    parts = subject.split(".")
    if len(parts) >= 3 and parts[1] == "gateway":
        return "chat.gateway.control"
    return subject


# Operations of each service (the ``op`` part of service_request).
class MessagingOps:
    READY = "ready"
    READY_MANY = "ready_many"
    SEND = "message_send"
    EDIT = "message_edit"
    DELETE = "message_delete"
    DM_SEND = "dm_send"
    HISTORY = "history"
    SYNC = "sync"
    SYNC_MANY = "sync_many"
    CHANNEL_ACCESS = "channel_access"
    GUILD_CREATE = "guild_create"
    GUILD_GET = "guild_get"
    CHANNEL_CREATE = "channel_create"
    INVITE_CREATE = "invite_create"
    INVITE_ACCEPT = "invite_accept"
    MEMBER_ROLE = "member_role"
    FRIENDS_LIST = "friends_list"
    FRIEND_PUT = "friend_put"
    FRIEND_DELETE = "friend_delete"


class PresenceOps:
    SESSION_OPEN = "session_open"
    SESSION_CLOSE = "session_close"
    SESSION_OPEN_MANY = "session_open_many"
    SESSION_CLOSE_MANY = "session_close_many"
    UPDATE = "update"
    TYPING_START = "typing_start"
    TYPING_STOP = "typing_stop"
    QUERY = "query"
    NODE_SESSIONS = "node_sessions"


class ModerationOps:
    KICK = "kick"
    BAN = "ban"
    UNBAN = "unban"
    TIMEOUT = "timeout"
    CHECK_CONNECT = "check_connect"


class VoiceOps:
    JOIN = "join"
    UPDATE = "update"
    LEAVE = "leave"
    SESSION_GONE = "session_gone"


class ServiceOps:
    """Ops every service answers."""

    PING = "ping"
