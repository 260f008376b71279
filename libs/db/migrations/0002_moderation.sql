-- Moderation: timeouts and the audit log (bans live in 0001).

CREATE TABLE guild_timeouts (
    guild_id    bigint NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    user_id     text NOT NULL,
    until       timestamptz NOT NULL,
    reason      text,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    guild_id    bigint NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    actor_id    text NOT NULL,
    action      text NOT NULL CHECK (action IN ('kick', 'ban', 'unban', 'timeout', 'role')),
    target_id   text NOT NULL,
    reason      text,
    details     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_guild_idx ON audit_log (guild_id, id DESC);
