"""Moderation settings."""

from __future__ import annotations

from dataclasses import dataclass

from libs.config.common import CommonSettings
from libs.config.settings import setting


@dataclass(frozen=True)
class ModerationSettings(CommonSettings):
    ops_port: int = setting(9104, "Port of the ops HTTP server")
