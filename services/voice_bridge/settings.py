"""Voice bridge settings."""

from __future__ import annotations

from dataclasses import dataclass

from libs.config.common import CommonSettings
from libs.config.settings import setting

DEV_LIVEKIT_SECRET = "secret"
# livekit-server refuses shorter secrets outside its dev mode: an HS256 key needs 256 bits.
LIVEKIT_SECRET_MIN_CHARS = 32


@dataclass(frozen=True)
class VoiceBridgeSettings(CommonSettings):
    ops_port: int = setting(9103, "Port of the ops HTTP server (also serves POST /livekit/webhook)")
    livekit_url: str = setting("ws://127.0.0.1:7880", "LiveKit server URL handed to clients and used for server API calls")
    livekit_api_key: str = setting("devkey", "LiveKit API key (issuer of access tokens, checked on webhooks)")
    livekit_api_secret: str = setting(DEV_LIVEKIT_SECRET, "LiveKit API secret; the default is for dev mode only",
                                      secret=True)
    livekit_timeout_s: float = setting(2.0, "Timeout of one LiveKit server API call")
    livekit_token_ttl_s: int = setting(3600, "Lifetime of a LiveKit access token")
    voice_state_ttl_s: int = setting(3600, "TTL of a voice state in Redis; refreshed while its session lives")
    voice_redis_timeout_s: float = setting(1.0, "Timeout of one Redis call of the voice state store")

    def warnings(self) -> list[str]:
        """Outside dev mode: the dev default lets anyone forge a webhook, and a LiveKit server outside its
        own dev mode does not accept a shorter secret."""
        warnings = super().warnings()
        if self.dev_mode:
            return warnings
        if self.livekit_api_secret == DEV_LIVEKIT_SECRET:
            warnings.append("CHAT_LIVEKIT_API_SECRET: the dev default outside dev mode; set the LiveKit secret")
        elif len(self.livekit_api_secret) < LIVEKIT_SECRET_MIN_CHARS:
            warnings.append(f"CHAT_LIVEKIT_API_SECRET: {len(self.livekit_api_secret)} characters; LiveKit outside "
                            f"its dev mode needs at least {LIVEKIT_SECRET_MIN_CHARS}")
        return warnings

    def validate(self) -> list[str]:
        problems = super().validate()
        if not self.livekit_api_key:
            problems.append("CHAT_LIVEKIT_API_KEY: must not be empty")
        if self.voice_state_ttl_s < 30:
            problems.append("CHAT_VOICE_STATE_TTL_S: must be at least 30")
        if self.livekit_token_ttl_s < 60:
            problems.append("CHAT_LIVEKIT_TOKEN_TTL_S: must be at least 60")
        if self.livekit_timeout_s <= 0 or self.voice_redis_timeout_s <= 0:
            problems.append("CHAT_LIVEKIT_TIMEOUT_S and CHAT_VOICE_REDIS_TIMEOUT_S: must be > 0")
        return problems
