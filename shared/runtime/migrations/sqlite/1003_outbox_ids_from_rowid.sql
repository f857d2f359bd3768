-- The outbox without AUTOINCREMENT: that kept the highest id ever given in sqlite_sequence, so
-- every transaction that wrote an outbox row also wrote that table's page to the WAL (one page
-- of the ten or so a one-message commit writes). An id is now the largest id present plus one:
-- still above every row in the table, so rows are published in id order as before. Only an id
-- already deleted can come back, and a deleted row is referred to nowhere (its id left the
-- relay's list in the transaction that deleted it).
CREATE TABLE outbox_by_rowid (
    id            INTEGER PRIMARY KEY,
    message_id    TEXT NOT NULL,
    message_type  TEXT NOT NULL,
    topic         TEXT NOT NULL,
    msg_key       TEXT NOT NULL,
    payload       BLOB NOT NULL,
    headers       TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    owner         TEXT
);
INSERT INTO outbox_by_rowid (id, message_id, message_type, topic, msg_key, payload, headers, created_at_ms, owner)
    SELECT id, message_id, message_type, topic, msg_key, payload, headers, created_at_ms, owner FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_by_rowid RENAME TO outbox;
