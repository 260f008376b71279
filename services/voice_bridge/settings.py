"""Voice bridge settings."""

from __future__ import annotations

from dataclasses import dataclass

from libs.config.common import CommonSettings
from libs.config.settings import setting


@dataclass(frozen=True)
class VoiceBridgeSettings(CommonSettings):
    ops_port: int = setting(9103, "Port of the ops HTTP server")
