"""Moderation settings."""

from __future__ import annotations

from dataclasses import dataclass

from libs.config.common import CommonSettings
from libs.config.settings import setting


@dataclass(frozen=True)
class ModerationSettings(CommonSettings):
    ops_port: int = setting(9104, "Port of the ops HTTP server")
    db_pool_min: int = setting(1, "Postgres pool: minimum connections")
    db_pool_max: int = setting(5, "Postgres pool: maximum connections")
    db_acquire_timeout_s: float = setting(2.0, "Postgres pool: acquire timeout")
    db_statement_timeout_ms: int = setting(5000, "Postgres statement timeout")
    control_timeout_s: float = setting(
        2.0, "Longest wait for gateway nodes to confirm a kick/ban (must stay below the bus request timeout)")
    control_settle_s: float = setting(
        1.0, "After the first gateway node confirms, how long to wait for the others")

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.db_pool_min < 0 or self.db_pool_max < max(1, self.db_pool_min):
            problems.append("CHAT_DB_POOL_MAX: must be >= 1 and >= CHAT_DB_POOL_MIN")
        if not (0 < self.control_timeout_s < self.bus_request_timeout_s):
            problems.append("CHAT_CONTROL_TIMEOUT_S: must be > 0 and below CHAT_BUS_REQUEST_TIMEOUT_S")
        if not (0 <= self.control_settle_s <= self.control_timeout_s):
            problems.append("CHAT_CONTROL_SETTLE_S: must be between 0 and CHAT_CONTROL_TIMEOUT_S")
        return problems
