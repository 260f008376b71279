-- Several messages in one call and one transaction (group commit): messaging sends the
-- messages that arrived while its earlier writes were in flight together, so that under
-- load one commit, one round trip and one pool checkout carry many messages.
--
-- Each message goes through chat_create_message (0003) unchanged; its status row comes
-- back with the message's 1-based position in the arrays (o_i). Messages are written in
-- channel order, and in arrival order within a channel, so that concurrent batches take
-- the channel row locks in the same order and cannot deadlock on them; the seqs of one
-- channel follow arrival order. p_mentions holds each message's mentions as a JSON array
-- (arrays of arrays must be rectangular in Postgres).

CREATE FUNCTION chat_create_messages(
    p_user text[], p_user_name text[], p_channel bigint[], p_nonce text[], p_content text[],
    p_attachments jsonb[], p_embeds jsonb[], p_mentions jsonb[], p_reply_to bigint[],
    p_created_at timestamptz[], p_payload jsonb[], p_event_id uuid[], p_subject text)
RETURNS TABLE (o_i int, o_status text, o_detail text, o_message_id bigint, o_seq bigint, o_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    k int;
BEGIN
    FOR k IN SELECT s.k FROM generate_subscripts(p_channel, 1) AS s(k) ORDER BY p_channel[s.k], s.k LOOP
        RETURN QUERY SELECT k, r.status, r.detail, r.message_id, r.seq, r.until
            FROM chat_create_message(
                p_user[k], p_user_name[k], p_channel[k], p_nonce[k], p_content[k], p_attachments[k],
                p_embeds[k], ARRAY(SELECT jsonb_array_elements_text(p_mentions[k])), p_reply_to[k],
                p_created_at[k], p_payload[k], p_event_id[k], p_subject) AS r;
    END LOOP;
END
$$;
