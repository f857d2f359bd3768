-- The partition number of the record that started the saga: its replies, keyed by its order id,
-- land on the same number of every topic. A deadline fires only once the orchestrator instance
-- that owns that partition has read it past the deadline (see saga_runtime::read_through).
-- Sagas started before this migration have none, and wait for every partition this instance owns.
ALTER TABLE sagas ADD COLUMN kafka_partition BIGINT;
