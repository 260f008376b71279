-- Core chat schema: users, guilds, channels, membership, invites, messages and the
-- per-channel event log that gives every create/edit/delete its gap-free seq.

CREATE TABLE users (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE guilds (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    owner_id    text NOT NULL REFERENCES users(id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE channels (
    id          bigserial PRIMARY KEY,
    guild_id    bigint REFERENCES guilds(id) ON DELETE CASCADE,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('text', 'voice', 'dm')),
    last_seq    bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channels_guild_idx ON channels (guild_id);

CREATE TABLE guild_members (
    guild_id    bigint NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    user_id     text NOT NULL REFERENCES users(id),
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'moderator', 'member')),
    joined_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (guild_id, user_id)
);
CREATE INDEX guild_members_user_idx ON guild_members (user_id);

-- DM channels: exactly one per pair of users (user_a < user_b).
CREATE TABLE dm_channels (
    channel_id  bigint PRIMARY KEY REFERENCES channels(id) ON DELETE CASCADE,
    user_a      text NOT NULL REFERENCES users(id),
    user_b      text NOT NULL REFERENCES users(id),
    UNIQUE (user_a, user_b),
    CHECK (user_a < user_b)
);
CREATE INDEX dm_channels_b_idx ON dm_channels (user_b);

CREATE TABLE invites (
    code        text PRIMARY KEY,
    guild_id    bigint NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    created_by  text NOT NULL REFERENCES users(id),
    uses        integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id          bigserial PRIMARY KEY,
    channel_id  bigint NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    author_id   text NOT NULL REFERENCES users(id),
    nonce       text NOT NULL,
    content     text NOT NULL,
    attachments jsonb NOT NULL DEFAULT '[]',
    embeds      jsonb NOT NULL DEFAULT '[]',
    mentions    jsonb NOT NULL DEFAULT '[]',
    reply_to    bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    edited_at   timestamptz,
    deleted_at  timestamptz,
    UNIQUE (channel_id, seq),
    UNIQUE (author_id, nonce)
);

-- One log per channel: seq 1, 2, 3, ... with no holes, taken in the writing transaction.
CREATE TABLE channel_events (
    channel_id  bigint NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('message:created', 'message:updated', 'message:deleted')),
    message_id  bigint NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, seq)
);

-- Transactional outbox of durable domain events, drained into JetStream.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    subject      text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_pending_idx ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE friendships (
    user_id     text NOT NULL REFERENCES users(id),
    friend_id   text NOT NULL REFERENCES users(id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, friend_id)
);
CREATE INDEX friendships_friend_idx ON friendships (friend_id);

CREATE TABLE bans (
    guild_id    bigint NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    user_id     text NOT NULL,
    reason      text,
    until       timestamptz,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (guild_id, user_id)
);
