"""The error vocabulary shared by every service and the client contract.

Each error carries a stable ``code`` from PROTOCOL.md. Transports turn them into acks
(``{"ok": false, "error": {...}}``) or HTTP bodies; nothing else converts them.
"""

from __future__ import annotations

from typing import Any

CODES = (
    "invalid",
    "unauthorized",
    "forbidden",
    "not_found",
    "rate_limited",
    "conflict",
    "unavailable",
    "internal",
    "banned",
)

HTTP_STATUS = {
    "invalid": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "banned": 403,
    "not_found": 404,
    "conflict": 409,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
}


class ChatError(Exception):
    """Root of every error that has a client-facing code."""

    code = "internal"

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.extra)
        return body

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


class Invalid(ChatError):
    code = "invalid"


class Unauthorized(ChatError):
    code = "unauthorized"


class Forbidden(ChatError):
    code = "forbidden"


class Banned(ChatError):
    code = "banned"


class NotFound(ChatError):
    code = "not_found"


class RateLimited(ChatError):
    code = "rate_limited"

    def __init__(self, message: str = "rate limited", retry_after_ms: int = 1000) -> None:
        super().__init__(message, retry_after_ms=int(retry_after_ms))


class Conflict(ChatError):
    code = "conflict"


class Unavailable(ChatError):
    code = "unavailable"


class Internal(ChatError):
    code = "internal"


_BY_CODE: dict[str, type[ChatError]] = {
    cls.code: cls
    for cls in (Invalid, Unauthorized, Forbidden, Banned, NotFound, RateLimited, Conflict,
                Unavailable, Internal)
}


def from_dict(body: dict[str, Any]) -> ChatError:
    """Rebuild an error received over the bus."""
    code = str(body.get("code", "internal"))
    message = str(body.get("message", code))
    extra = {k: v for k, v in body.items() if k not in ("code", "message")}
    cls = _BY_CODE.get(code, Internal)
    if cls is RateLimited:
        return RateLimited(message, int(extra.get("retry_after_ms", 1000)))
    err = cls(message)
    err.extra = extra
    return err


def error_ack(err: ChatError) -> dict[str, Any]:
    return {"ok": False, "error": err.to_dict()}
