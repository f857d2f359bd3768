-- Every saga log entry records the definition version its saga runs, so "what happened to order
-- X" stays answerable (which steps, in which order) after that version is retired. Entries
-- written before this migration are of sagas that all ran version 1, the only one there was.
ALTER TABLE saga_log ADD COLUMN definition_version BIGINT NOT NULL DEFAULT 1;
-- Which versions still have sagas in flight (startup check, `sagactl definitions in-flight`).
CREATE INDEX IF NOT EXISTS sagas_by_version ON sagas (definition_version, status);
