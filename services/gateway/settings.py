"""Gateway settings."""

from __future__ import annotations

from dataclasses import dataclass

from libs.config.common import CommonSettings
from libs.config.settings import setting


@dataclass(frozen=True)
class GatewaySettings(CommonSettings):
    host: str = setting("0.0.0.0", "Interface of the public Socket.IO + HTTP server")
    port: int = setting(8080, "Public port (Socket.IO at /socket.io/, HTTP API at /api/v1/)")
    ops_port: int = setting(0, "Ops port; 0 means public port + 1000")
    jwt_secret: str = setting("", "HS256 secret for dev-mode tokens", secret=True)
    jwt_audience: str = setting("chat", "Required `aud` claim")
    jwt_issuer: str = setting("chat-dev", "Required `iss` claim")
    jwt_jwks_url: str = setting("", "JWKS URL for RS256/ES256 tokens (production)")
    allowed_origins: tuple[str, ...] = setting((), "Allowed browser Origins, comma separated; empty = any in dev mode, none otherwise")
    trusted_proxy_header: str = setting("", "Header carrying the client IP (e.g. X-Forwarded-For) when behind a trusted proxy")
    ping_interval_s: float = setting(25.0, "Engine.IO ping interval")
    ping_timeout_s: float = setting(20.0, "Engine.IO ping timeout")
    max_frame_bytes: int = setting(65536, "Largest Socket.IO frame accepted")
    connect_timeout_s: float = setting(10.0, "Engine.IO sessions that send no CONNECT within this are closed")
    connect_concurrency: int = setting(64, "Authenticated connects handled at once per node (ready, presence); "
                                           "the others wait their turn instead of timing out behind them")
    client_queue_soft: int = setting(200, "Packets queued for one long-polling socket past which typing/presence to it are dropped")
    client_queue_hard: int = setting(1000, "Packets queued for one long-polling socket past which it gets sync:required and is disconnected")
    client_buffer_soft_bytes: int = setting(256 * 1024, "Bytes one WebSocket has not taken past which typing/presence to it are dropped")
    client_buffer_hard_bytes: int = setting(2 * 1024 * 1024, "Bytes one WebSocket has not taken past which it gets sync:required and is disconnected")
    drain_batch: int = setting(100, "Sockets told to reconnect per batch while draining")
    drain_batch_interval_ms: int = setting(200, "Delay between reconnect batches while draining")

    ratelimit_ahead_fraction: float = setting(0.5, "Share of a rate limit a node admits before Redis answers (hits still "
                                                   "counted in Redis); 0 = every check waits for Redis")
    rate_connect: str = setting("10/minute", "Connections per client IP")
    rate_message_send: str = setting("30/minute", "message:send per user")
    rate_message_edit: str = setting("10/minute", "message:edit per user")
    rate_message_delete: str = setting("5/minute", "message:delete per user")
    rate_typing: str = setting("10/10 seconds", "typing:start per user")
    rate_presence: str = setting("5/30 seconds", "presence:update per user")
    rate_voice: str = setting("20/minute", "voice:join, voice:update, voice:leave per user")
    rate_channel: str = setting("50/minute", "channel:join and channel:leave per user")
    rate_dm: str = setting("20/minute", "dm:send per user")
    rate_mod_kick: str = setting("5/5 minutes", "mod:kick per user")
    rate_mod_ban: str = setting("3/5 minutes", "mod:ban per user")
    rate_mod_unban: str = setting("5/5 minutes", "mod:unban per user")
    rate_mod_timeout: str = setting("5/5 minutes", "mod:timeout per user")
    rate_sync: str = setting("120/minute", "sync per user")
    rate_invalid: str = setting("60/minute", "unknown events per user")

    def rate_rules(self) -> dict[str, str]:
        return {f[len("rate_"):]: getattr(self, f) for f in self.__dataclass_fields__ if f.startswith("rate_")}

    @property
    def effective_ops_port(self) -> int:
        return self.ops_port or self.port + 1000

    def validate(self) -> list[str]:
        problems = super().validate() if self.ops_port else [
            p for p in super().validate() if not p.startswith("CHAT_OPS_PORT")]
        if not self.jwt_jwks_url and not (self.dev_mode and self.jwt_secret):
            problems.append("CHAT_JWT_JWKS_URL: required unless CHAT_DEV_MODE=1 with CHAT_JWT_SECRET")
        if not (0 < self.port < 65536):
            problems.append("CHAT_PORT: out of range")
        if not (0.0 <= self.ratelimit_ahead_fraction <= 1.0):
            problems.append("CHAT_RATELIMIT_AHEAD_FRACTION: between 0 and 1")
        from limits import parse

        for rule, spec in self.rate_rules().items():
            try:
                parse(spec)
            except ValueError:
                problems.append(f"CHAT_RATE_{rule.upper()}: not a rate like '30/minute'")
        return problems
