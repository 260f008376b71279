-- The outbox now deletes a row once JetStream acknowledged it (it used to set published_at
-- and keep the row for ever). Rows published before that change go too.
DELETE FROM outbox WHERE published_at IS NOT NULL;
