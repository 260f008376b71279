"""Row -> contract struct conversion for messaging's Postgres adapter."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from libs.bus import schemas


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _json(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        return orjson.loads(value)
    return value


def message_from_row(r: Any) -> schemas.Message:
    return schemas.Message(
        id=str(r["id"]),
        channel_id=str(r["channel_id"]),
        seq=r["seq"],
        author=schemas.UserRef(id=r["author_id"], name=r["author_name"]),
        content=r["content"],
        nonce=r["nonce"],
        attachments=[schemas.Attachment(**a) for a in _json(r["attachments"])],
        embeds=[schemas.Embed(**e) for e in _json(r["embeds"])],
        mentions=list(_json(r["mentions"])),
        reply_to=str(r["reply_to"]) if r["reply_to"] is not None else None,
        created_at=iso(r["created_at"]) or "",
        edited_at=iso(r["edited_at"]),
    )


def channel_from_row(r: Any) -> schemas.Channel:
    return schemas.Channel(
        id=str(r["id"]),
        guild_id=str(r["guild_id"]) if r["guild_id"] is not None else None,
        name=r["name"],
        kind=r["kind"],
        last_seq=r["last_seq"],
    )


MESSAGE_COLUMNS = """
    m.id, m.channel_id, m.seq, m.author_id, u.name AS author_name, m.content, m.nonce,
    m.attachments, m.embeds, m.mentions, m.reply_to, m.created_at, m.edited_at
"""
