-- The janitor deletes inbox rows past the dedupe window, oldest first.
CREATE INDEX IF NOT EXISTS inbox_by_age ON inbox (received_at_ms);
