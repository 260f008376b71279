"""Presence settings."""

from __future__ import annotations

from dataclasses import dataclass

from libs.config.common import CommonSettings
from libs.config.settings import setting


@dataclass(frozen=True)
class PresenceSettings(CommonSettings):
    ops_port: int = setting(9102, "Port of the ops HTTP server")
    node_timeout_s: float = setting(15.0, "A gateway node silent this long is dead; its sessions are removed")
    node_check_s: float = setting(2.0, "How often node liveness is checked")
    typing_ttl_s: float = setting(15.0, "Typing state expires after this long without typing:start")
    offline_grace_s: float = setting(15.0, "A user's last session closing is announced as offline after this long, unless they are back (0: at once)")
    typing_sweep_s: float = setting(60.0, "Longest wait between sweeps of typing expiries and offline graces (each is also scheduled when due)")
    stale_sweep_s: float = setting(300.0, "Sweep of sessions whose node is gone, and of orphaned keys")
    redis_timeout_s: float = setting(1.0, "Timeout of each Redis call")
    key_ttl_s: int = setting(86400, "TTL of per-user presence keys (refreshed while connected)")
