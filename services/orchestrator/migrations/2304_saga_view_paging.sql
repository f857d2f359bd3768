-- The saga view pages through sagas newest first by (created_at_ms, saga_id): keyset paging,
-- which this index serves without sorting the table.
CREATE INDEX IF NOT EXISTS sagas_by_start ON sagas (created_at_ms, saga_id);
