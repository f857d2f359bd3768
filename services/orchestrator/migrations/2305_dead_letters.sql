-- The dead letters that parked a saga, whole (key, value, every header, as JSON), so the saga
-- view shows them and an operator can redrive one from there; when and by whom it was redriven.
CREATE TABLE IF NOT EXISTS saga_dead_letters (
    dlt_topic      TEXT NOT NULL,
    dlt_partition  BIGINT NOT NULL,
    dlt_offset     BIGINT NOT NULL,
    saga_id        TEXT NOT NULL,
    seen_at_ms     BIGINT NOT NULL,
    record         TEXT NOT NULL,
    redriven_at_ms BIGINT,
    redriven_by    TEXT,
    PRIMARY KEY (dlt_topic, dlt_partition, dlt_offset)
);
CREATE INDEX IF NOT EXISTS saga_dead_letters_by_saga ON saga_dead_letters (saga_id, seen_at_ms);
