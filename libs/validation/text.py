"""Text rules shared by every service (pure): normalisation, neutralised markup, limits."""

from __future__ import annotations

import html
import re
import unicodedata

MAX_CONTENT_CHARS = 2000
MAX_ATTACHMENTS = 10
MAX_ATTACHMENT_BYTES = 100 * 1024 * 1024
MAX_EMBEDS = 5
MAX_MENTIONS = 20

# C0/C1 controls except tab and newline; bidi overrides and zero-width joiners that
# make text lie about itself.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200b\ufeff]")


def normalise(text: str) -> str:
    """NFC, controls stripped, line endings unified, outer whitespace trimmed."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _CONTROL.sub("", text).strip()


def neutralise_markup(text: str) -> str:
    """HTML-escape ``<``, ``>`` and ``&``: no tag, attribute or entity in the stored text
    can act in a client that renders HTML, and the text reads exactly as written.

    Content is plain text, so escaping (not tag stripping) is the neutralisation: a
    tag-stripping sanitiser cannot tell ``a<b && c>d`` from a tag and would eat it.
    """
    return html.escape(text, quote=False)


def clean_content(text: str) -> str:
    """The stored form of message content; raises ValueError when it is out of bounds."""
    text = normalise(text)
    if not text:
        raise ValueError("content is empty")
    if len(text) > MAX_CONTENT_CHARS:
        raise ValueError(f"content is longer than {MAX_CONTENT_CHARS} characters")
    return neutralise_markup(text)


def clean_plain(text: str, max_len: int) -> str:
    """Short plain fields (names, titles): normalised and markup-free."""
    return neutralise_markup(normalise(text)[:max_len])
