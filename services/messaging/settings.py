"""Messaging settings."""

from __future__ import annotations

from dataclasses import dataclass

from libs.config.common import CommonSettings
from libs.config.settings import setting


@dataclass(frozen=True)
class MessagingSettings(CommonSettings):
    ops_port: int = setting(9101, "Port of the ops HTTP server")
    db_pool_min: int = setting(1, "Postgres pool: minimum connections")
    db_pool_max: int = setting(10, "Postgres pool: maximum connections")
    db_acquire_timeout_s: float = setting(2.0, "Postgres pool: acquire timeout")
    db_statement_timeout_ms: int = setting(5000, "Postgres statement timeout")
    sync_page_size: int = setting(100, "Events per channel in one sync answer")
    reply_max_bytes: int = setting(
        512 * 1024, "Largest reply to a batch or a sync (keep it under NATS' max_payload): ready_many and sync_many "
                    "answer the calls that fit and the gateway asks again for the rest; a sync's events stop "
                    "there with complete false and the client calls again")
    outbox_linger_ms: int = setting(50, "Outbox: after new events, wait this long so they go to JetStream together")
    send_batch_max: int = setting(64, "Group commit: most messages stored by one Postgres call and commit")
    send_batches_inflight: int = setting(
        1, "Group commit: Postgres calls storing messages at once per process; sends beyond them wait and go "
           "together (1: at 1,000 msg/s, batches of 2 instead of 1.3 and a quarter less Postgres CPU)")
