-- Messages already handled: a redelivered message id is acknowledged with no effect.
CREATE TABLE IF NOT EXISTS inbox (
    message_id      TEXT PRIMARY KEY,
    message_type    TEXT NOT NULL,
    topic           TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    received_at_ms  INTEGER NOT NULL
);

-- Messages committed with a state change and not yet published; the relay publishes and deletes.
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT NOT NULL,
    message_type  TEXT NOT NULL,
    topic         TEXT NOT NULL,
    msg_key       TEXT NOT NULL,
    payload       BLOB NOT NULL,
    headers       TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
