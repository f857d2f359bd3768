-- One row per saga instance: where it stands, and the data its commands are built from.
CREATE TABLE IF NOT EXISTS sagas (
    saga_id            TEXT PRIMARY KEY,
    saga_type          TEXT NOT NULL,
    definition_version BIGINT NOT NULL,
    status             TEXT NOT NULL,
    position           TEXT NOT NULL,
    attempt            BIGINT NOT NULL,
    failure_reason     TEXT,
    data               TEXT NOT NULL,
    correlation_id     TEXT NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    version            BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sagas_by_status ON sagas (status, updated_at_ms);

-- Append-only: every transition and every ignored reply, with the message that caused it.
CREATE TABLE IF NOT EXISTS saga_log (
    saga_id            TEXT NOT NULL,
    seq                BIGINT NOT NULL,
    at_ms              BIGINT NOT NULL,
    event              TEXT NOT NULL,
    step               TEXT,
    from_status        TEXT,
    to_status          TEXT NOT NULL,
    cause_message_id   TEXT,
    cause_message_type TEXT,
    sent               TEXT NOT NULL,
    detail             TEXT,
    PRIMARY KEY (saga_id, seq)
);

-- Replies for sagas that do not exist (for example OrderRejected of an order refused by
-- validation, which never started a saga), kept so that nothing arrives unaccounted for.
CREATE TABLE IF NOT EXISTS stray_messages (
    message_id   TEXT PRIMARY KEY,
    saga_id      TEXT NOT NULL,
    message_type TEXT NOT NULL,
    at_ms        BIGINT NOT NULL,
    reason       TEXT NOT NULL
);
