-- Sending a message in one round trip: the checks, the seq, the message row, its event
-- in the channel log and its outbox entry, all in the one implicit transaction of a
-- function call (was ten statements, each a round trip, in an explicit transaction).
--
-- p_payload is the event payload with the message's id and seq left as placeholders;
-- they are filled in here. Returns one row: status 'ok' (message_id, seq), 'duplicate'
-- (message_id of the earlier message with this nonce), 'not_found', 'invalid' or
-- 'timed_out' (until); detail carries what the error message needs.

CREATE FUNCTION chat_create_message(
    p_user text, p_user_name text, p_channel bigint, p_nonce text, p_content text,
    p_attachments jsonb, p_embeds jsonb, p_mentions text[], p_reply_to bigint,
    p_created_at timestamptz, p_payload jsonb, p_event_id uuid, p_subject text)
RETURNS TABLE (status text, detail text, message_id bigint, seq bigint, until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    v_seq bigint;
    v_id bigint;
    v_until timestamptz;
    v_missing text[];
    v_payload jsonb;
    v_name text;
BEGIN
    -- the author row (a plain read when it is there and current, as it nearly always is)
    SELECT u.name INTO v_name FROM users u WHERE u.id = p_user;
    IF NOT FOUND THEN
        INSERT INTO users (id, name) VALUES (p_user, p_user_name) ON CONFLICT (id) DO NOTHING;
    ELSIF v_name IS DISTINCT FROM p_user_name THEN
        UPDATE users SET name = p_user_name WHERE id = p_user;
    END IF;

    SELECT m.id INTO v_id FROM messages m WHERE m.author_id = p_user AND m.nonce = p_nonce;
    IF FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::text, v_id, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;

    SELECT ch.id, ch.kind, ch.guild_id, gm.role, d.user_a, d.user_b INTO c
        FROM channels ch
        LEFT JOIN guild_members gm ON gm.guild_id = ch.guild_id AND gm.user_id = p_user
        LEFT JOIN dm_channels d ON d.channel_id = ch.id
        WHERE ch.id = p_channel;
    IF NOT FOUND
       OR (c.kind = 'dm' AND p_user IS DISTINCT FROM c.user_a AND p_user IS DISTINCT FROM c.user_b)
       OR (c.kind <> 'dm' AND c.role IS NULL) THEN
        RETURN QUERY SELECT 'not_found'::text, 'channel not found'::text, NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    IF c.kind = 'voice' THEN
        RETURN QUERY SELECT 'invalid'::text, 'channel_id: cannot send messages to a voice channel'::text,
            NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    IF c.guild_id IS NOT NULL THEN
        SELECT t.until INTO v_until FROM guild_timeouts t
            WHERE t.guild_id = c.guild_id AND t.user_id = p_user AND t.until > now();
        IF FOUND THEN
            RETURN QUERY SELECT 'timed_out'::text, NULL::text, NULL::bigint, NULL::bigint, v_until;
            RETURN;
        END IF;
    END IF;
    IF p_reply_to IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM messages r WHERE r.id = p_reply_to AND r.channel_id = c.id) THEN
        RETURN QUERY SELECT 'not_found'::text, 'reply_to: message not found in this channel'::text,
            NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    IF cardinality(p_mentions) > 0 THEN
        IF c.kind = 'dm' THEN
            v_missing := ARRAY(SELECT u.m FROM unnest(p_mentions) WITH ORDINALITY AS u(m, i)
                               WHERE u.m IS DISTINCT FROM c.user_a AND u.m IS DISTINCT FROM c.user_b ORDER BY u.i);
        ELSE
            v_missing := ARRAY(SELECT u.m FROM unnest(p_mentions) WITH ORDINALITY AS u(m, i)
                               WHERE NOT EXISTS (SELECT 1 FROM guild_members g
                                                 WHERE g.guild_id = c.guild_id AND g.user_id = u.m)
                               ORDER BY u.i);
        END IF;
        IF cardinality(v_missing) > 0 THEN
            RETURN QUERY SELECT 'invalid'::text,
                ('mentions: not members of this channel: ' || array_to_string(v_missing[1:5], ', '))::text,
                NULL::bigint, NULL::bigint, NULL::timestamptz;
            RETURN;
        END IF;
    END IF;

    UPDATE channels SET last_seq = last_seq + 1 WHERE id = c.id RETURNING last_seq INTO v_seq;
    INSERT INTO messages (channel_id, seq, author_id, nonce, content, attachments, embeds, mentions, reply_to, created_at)
        VALUES (c.id, v_seq, p_user, p_nonce, p_content, p_attachments, p_embeds, to_jsonb(p_mentions), p_reply_to, p_created_at)
        ON CONFLICT (author_id, nonce) DO NOTHING
        RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        -- the same nonce committed concurrently: give the seq back (the row lock is still ours)
        UPDATE channels SET last_seq = last_seq - 1 WHERE id = c.id;
        SELECT m.id INTO v_id FROM messages m WHERE m.author_id = p_user AND m.nonce = p_nonce;
        RETURN QUERY SELECT 'duplicate'::text, NULL::text, v_id, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;

    v_payload := jsonb_set(jsonb_set(jsonb_set(p_payload, '{seq}', to_jsonb(v_seq)),
                                     '{message,seq}', to_jsonb(v_seq)),
                           '{message,id}', to_jsonb(v_id::text));
    INSERT INTO channel_events (channel_id, seq, kind, message_id, payload)
        VALUES (c.id, v_seq, 'message:created', v_id, v_payload);
    INSERT INTO outbox (event_id, subject, payload)
        VALUES (p_event_id, p_subject,
                v_payload || jsonb_build_object('event_id', p_event_id::text, 'event', 'message:created'));
    RETURN QUERY SELECT 'ok'::text, NULL::text, v_id, v_seq, NULL::timestamptz;
END
$$;
