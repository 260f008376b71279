"""Bus messages of the voice service."""

from __future__ import annotations

from libs.bus.schemas.core import Struct, UserRef  # noqa: F401
