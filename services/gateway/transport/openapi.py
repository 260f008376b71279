"""OpenAPI 3.0.3 document of the HTTP API (served at ``GET /api/v1/openapi.json``).

Paths are relative to the single server entry ``/api/v1``. Every operation lists the
error statuses it can answer with; every error body is the shared ``Error`` schema.
"""

from __future__ import annotations

from typing import Any

import orjson

from libs.errors import CODES

# -- building blocks -------------------------------------------------------------------------

ID_PATTERN = "^[0-9]{1,19}$"
USER_ID_PATTERN = "^[A-Za-z0-9_.-]{1,64}$"
NOT_BLANK = r"\S"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR_TEXT = {
    "400": "Invalid: the request failed validation (`invalid`); the message names the field.",
    "401": "Unauthorized: missing, malformed, expired or otherwise invalid bearer token.",
    "403": "Forbidden: authenticated but not allowed (`forbidden` or `banned`).",
    "404": "Not found: the resource does not exist or is not visible to the caller "
           "(also any unknown path under /api/).",
    "405": "Method not allowed on this path (body code `invalid`).",
    "409": "Conflict with the current state of the resource.",
    "429": "Rate limited; `retry_after_ms` says when to retry.",
    "500": "Internal error (a bug); the request may be retried.",
    "503": "A dependency is down or its circuit breaker is open; safe to retry.",
}


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: {"$ref": f"#/components/responses/{_RESPONSE_NAMES[s]}"} for s in statuses}


_RESPONSE_NAMES = {
    "400": "Invalid",
    "401": "Unauthorized",
    "403": "Forbidden",
    "404": "NotFound",
    "405": "MethodNotAllowed",
    "409": "Conflict",
    "429": "RateLimited",
    "500": "Internal",
    "503": "Unavailable",
}

# Errors every authenticated operation can answer with.
_AUTHED = ("400", "401", "404", "405", "429", "500", "503")


def _path_param(name: str, description: str, pattern: str | None = None,
                max_length: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if pattern is not None:
        schema["pattern"] = pattern
    if max_length is not None:
        schema["maxLength"] = max_length
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _query_int(name: str, description: str, minimum: int, maximum: int) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "integer", "minimum": minimum, "maximum": maximum}}


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"required": True, "description": description,
            "content": {"application/json": {"schema": schema}}}


GUILD_ID = _path_param("guild_id", "Guild id (decimal).", ID_PATTERN)
CHANNEL_ID = _path_param("channel_id", "Channel id (decimal).", ID_PATTERN)
USER_ID = _path_param("user_id", "User id (the `sub` of that user's token).", USER_ID_PATTERN)
INVITE_CODE = _path_param("code", "Invite code returned by `POST /guilds/{guild_id}/invites`.",
                          max_length=64)

# -- schemas ---------------------------------------------------------------------------------

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Body of every error response.",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": True,
                "properties": {
                    "code": {"type": "string", "enum": list(CODES),
                             "description": "Stable error code of the client contract."},
                    "message": {"type": "string", "description": "Human-readable detail."},
                    "retry_after_ms": {"type": "integer", "minimum": 0,
                                       "description": "With `rate_limited`: when to retry."},
                },
            },
        },
    },
    "UserRef": {
        "type": "object",
        "required": ["id", "name"],
        "properties": {
            "id": {"type": "string", "pattern": USER_ID_PATTERN},
            "name": {"type": "string"},
        },
    },
    "GuildSummary": {
        "type": "object",
        "required": ["id", "name", "role"],
        "properties": {
            "id": {"type": "string", "pattern": ID_PATTERN},
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["owner", "admin", "moderator", "member"]},
        },
    },
    "Channel": {
        "type": "object",
        "required": ["id", "guild_id", "name", "kind", "last_seq"],
        "properties": {
            "id": {"type": "string", "pattern": ID_PATTERN},
            "guild_id": {"type": "string", "pattern": ID_PATTERN, "nullable": True,
                         "description": "null for direct-message channels."},
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["text", "voice", "dm"]},
            "last_seq": {"type": "integer", "minimum": 0,
                         "description": "seq of the newest event in the channel's log."},
        },
    },
    "Member": {
        "type": "object",
        "required": ["user_id", "name", "role"],
        "properties": {
            "user_id": {"type": "string", "pattern": USER_ID_PATTERN},
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["owner", "admin", "moderator", "member"]},
        },
    },
    "Guild": {
        "type": "object",
        "required": ["id", "name", "owner_id", "channels", "members"],
        "properties": {
            "id": {"type": "string", "pattern": ID_PATTERN},
            "name": {"type": "string"},
            "owner_id": {"type": "string", "pattern": USER_ID_PATTERN},
            "channels": {"type": "array", "items": _ref("Channel")},
            "members": {"type": "array", "items": _ref("Member")},
        },
    },
    "Attachment": {
        "type": "object",
        "required": ["filename", "size", "content_type", "url"],
        "properties": {
            "filename": {"type": "string"},
            "size": {"type": "integer", "minimum": 0, "maximum": 100 * 1024 * 1024},
            "content_type": {"type": "string"},
            "url": {"type": "string"},
        },
    },
    "Embed": {
        "type": "object",
        "required": ["title", "description", "url"],
        "properties": {
            "title": {"type": "string", "nullable": True},
            "description": {"type": "string", "nullable": True},
            "url": {"type": "string", "nullable": True},
        },
    },
    "Message": {
        "type": "object",
        "required": ["id", "channel_id", "seq", "author", "content", "nonce", "attachments", "embeds",
                     "mentions", "reply_to", "created_at", "edited_at"],
        "properties": {
            "id": {"type": "string", "pattern": ID_PATTERN},
            "channel_id": {"type": "string", "pattern": ID_PATTERN},
            "seq": {"type": "integer", "minimum": 1,
                    "description": "Log position of the message's creation."},
            "author": _ref("UserRef"),
            "content": {"type": "string",
                        "description": "Plain text, markup neutralised; empty once deleted."},
            "nonce": {"type": "string", "nullable": True},
            "attachments": {"type": "array", "maxItems": 10, "items": _ref("Attachment")},
            "embeds": {"type": "array", "maxItems": 5, "items": _ref("Embed")},
            "mentions": {"type": "array", "maxItems": 20, "items": {"type": "string"}},
            "reply_to": {"type": "string", "nullable": True,
                         "description": "Id of the message this one replies to."},
            "created_at": {"type": "string", "format": "date-time",
                           "example": "2026-11-25T19:00:00.000Z"},
            "edited_at": {"type": "string", "format": "date-time", "nullable": True},
        },
    },
    "Me": {
        "type": "object",
        "description": "The caller, their guilds and every channel they can see (as in `ready`).",
        "required": ["user", "guilds", "channels"],
        "properties": {
            "user": _ref("UserRef"),
            "guilds": {"type": "array", "items": _ref("GuildSummary")},
            "channels": {"type": "array", "items": _ref("Channel")},
        },
    },
    "History": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {"type": "array", "maxItems": 100, "items": _ref("Message"),
                         "description": "Oldest first."},
        },
    },
    "Invite": {
        "type": "object",
        "required": ["code"],
        "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 64}},
    },
    "Friends": {
        "type": "object",
        "required": ["friends", "incoming", "outgoing"],
        "properties": {
            "friends": {"type": "array", "items": _ref("UserRef"),
                        "description": "Both sides have sent a request."},
            "incoming": {"type": "array", "items": _ref("UserRef"),
                         "description": "Requests to the caller not yet returned."},
            "outgoing": {"type": "array", "items": _ref("UserRef"),
                         "description": "The caller's requests not yet returned."},
        },
    },
    "FriendStatus": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["friends", "pending"]}},
    },
    "DevTokenRequest": {
        "type": "object",
        "required": ["sub"],
        "properties": {
            "sub": {"type": "string", "pattern": USER_ID_PATTERN,
                    "description": "User id; the user is created on first sight."},
            "name": {"type": "string", "maxLength": 64, "pattern": NOT_BLANK,
                     "description": "Display name; defaults to `sub`."},
        },
    },
    "DevToken": {
        "type": "object",
        "required": ["token"],
        "properties": {"token": {"type": "string", "description": "A signed HS256 JWT."}},
    },
    "CreateGuild": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": NOT_BLANK}},
    },
    "CreateChannel": {
        "type": "object",
        "required": ["name", "kind"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": NOT_BLANK},
            "kind": {"type": "string", "enum": ["text", "voice"]},
        },
    },
    "SetRole": {
        "type": "object",
        "required": ["role"],
        "properties": {"role": {"type": "string", "enum": ["admin", "moderator", "member"]}},
    },
}

_RESPONSES: dict[str, Any] = {
    name: _json(_ref("Error"), _ERROR_TEXT[status]) for status, name in _RESPONSE_NAMES.items()
}

# -- paths -----------------------------------------------------------------------------------

_PATHS: dict[str, Any] = {
    "/dev/token": {
        "post": {
            "operationId": "devToken",
            "tags": ["dev"],
            "summary": "Issue a dev token (dev mode only)",
            "description": "Exists only when the cluster runs in dev mode; answers 404 otherwise.",
            "security": [],
            "requestBody": _body(_ref("DevTokenRequest"), "Who the token is for."),
            "responses": {"200": _json(_ref("DevToken"), "A token for that user."),
                          **_errors("400", "404", "405", "429", "500", "503")},
        },
    },
    "/users/@me": {
        "get": {
            "operationId": "getMe",
            "tags": ["users"],
            "summary": "The caller, their guilds and channels",
            "responses": {"200": _json(_ref("Me"), "The caller's state."), **_errors(*_AUTHED)},
        },
    },
    "/guilds": {
        "post": {
            "operationId": "createGuild",
            "tags": ["guilds"],
            "summary": "Create a guild owned by the caller",
            "description": "The guild starts with the channels `general` (text) and `lounge` (voice).",
            "requestBody": _body(_ref("CreateGuild"), "The guild's name."),
            "responses": {"201": _json(_ref("Guild"), "The new guild."), **_errors(*_AUTHED)},
        },
    },
    "/guilds/{guild_id}": {
        "parameters": [GUILD_ID],
        "get": {
            "operationId": "getGuild",
            "tags": ["guilds"],
            "summary": "A guild with its channels and members (members only)",
            "responses": {"200": _json(_ref("Guild"), "The guild."), **_errors(*_AUTHED, "403")},
        },
    },
    "/guilds/{guild_id}/channels": {
        "parameters": [GUILD_ID],
        "post": {
            "operationId": "createChannel",
            "tags": ["guilds"],
            "summary": "Create a channel (admin or owner only)",
            "requestBody": _body(_ref("CreateChannel"), "The channel's name and kind."),
            "responses": {"201": _json(_ref("Channel"), "The new channel."), **_errors(*_AUTHED, "403")},
        },
    },
    "/guilds/{guild_id}/invites": {
        "parameters": [GUILD_ID],
        "post": {
            "operationId": "createInvite",
            "tags": ["guilds"],
            "summary": "Create an invite code (any member)",
            "responses": {"201": _json(_ref("Invite"), "The new invite."), **_errors(*_AUTHED, "403")},
        },
    },
    "/invites/{code}": {
        "parameters": [INVITE_CODE],
        "post": {
            "operationId": "acceptInvite",
            "tags": ["guilds"],
            "summary": "Join the invite's guild as a member (refused when banned)",
            "description": "Accepting an invite of a guild the caller is already in returns the guild unchanged.",
            "responses": {"200": _json(_ref("Guild"), "The joined guild."), **_errors(*_AUTHED, "403")},
        },
    },
    "/guilds/{guild_id}/members/{user_id}": {
        "parameters": [GUILD_ID, USER_ID],
        "put": {
            "operationId": "setMemberRole",
            "tags": ["guilds"],
            "summary": "Set a member's role (owner or admin only)",
            "description": "Only the owner appoints or changes admins; the owner's role and the "
                           "caller's own cannot be changed.",
            "requestBody": _body(_ref("SetRole"), "The new role."),
            "responses": {"200": _json(_ref("Member"), "The member with the new role."),
                          **_errors(*_AUTHED, "403")},
        },
    },
    "/channels/{channel_id}/messages": {
        "parameters": [CHANNEL_ID],
        "get": {
            "operationId": "getHistory",
            "tags": ["messages"],
            "summary": "Message history of a channel (members only), oldest first",
            "description": "With `after_seq`: the oldest messages after it; otherwise the newest "
                           "messages (before `before_seq` when given). Deleted messages are left out.",
            "parameters": [
                _query_int("before_seq", "Only messages with a smaller seq.", 0, 2**62),
                _query_int("after_seq", "Only messages with a greater seq (takes precedence).", 0, 2**62),
                {**_query_int("limit", "At most this many messages (default 50).", 1, 100),
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
            ],
            "responses": {"200": _json(_ref("History"), "The page of messages."),
                          **_errors(*_AUTHED, "403")},
        },
    },
    "/users/@me/friends": {
        "get": {
            "operationId": "listFriends",
            "tags": ["friends"],
            "summary": "Friends and pending friend requests",
            "responses": {"200": _json(_ref("Friends"), "The caller's friends and requests."),
                          **_errors(*_AUTHED)},
        },
    },
    "/users/@me/friends/{user_id}": {
        "parameters": [USER_ID],
        "put": {
            "operationId": "putFriend",
            "tags": ["friends"],
            "summary": "Send or accept a friend request",
            "description": "A friendship exists once both sides have PUT; until then it is pending.",
            "responses": {"200": _json(_ref("FriendStatus"), "The relation after the call."),
                          **_errors(*_AUTHED, "403")},
        },
        "delete": {
            "operationId": "deleteFriend",
            "tags": ["friends"],
            "summary": "Remove a friend or withdraw / decline a request",
            "responses": {"204": {"description": "Removed."}, **_errors(*_AUTHED)},
        },
    },
    "/openapi.json": {
        "get": {
            "operationId": "getOpenApi",
            "tags": ["meta"],
            "summary": "This document",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document."),
                          **_errors("404", "405", "500")},
        },
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Chat HTTP API",
        "version": "1.0.0",
        "description": "HTTP API of the chat gateway. JSON bodies; `Authorization: Bearer <JWT>` on "
                       "every operation except the dev token and this document. Errors use the "
                       "codes of the client contract in `{\"error\": {\"code\", \"message\"}}`.",
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearerAuth": []}],
    "tags": [{"name": n} for n in ("dev", "users", "guilds", "messages", "friends", "meta")],
    "paths": _PATHS,
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": _SCHEMAS,
        "responses": _RESPONSES,
    },
}

OPENAPI_JSON: bytes = orjson.dumps(OPENAPI)
