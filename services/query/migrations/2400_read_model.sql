-- The read model of orders, projected from the event stream (see saga-query's model.rs).

-- One row per order: the view as JSON, and the columns lists filter and sort on.
CREATE TABLE IF NOT EXISTS order_view (
    order_id      TEXT PRIMARY KEY,
    customer_id   TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED')),
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    view          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_view_newest ON order_view (created_at_ms, order_id);
CREATE INDEX IF NOT EXISTS order_view_by_customer ON order_view (customer_id, created_at_ms, order_id);

-- Every message applied to an order, with where it was read: the history, and what as_of and a
-- rebuild fold.
CREATE TABLE IF NOT EXISTS order_history (
    message_id      TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL,
    message_type    TEXT NOT NULL,
    topic           TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    occurred_at_ms  BIGINT NOT NULL,
    applied_at_ms   BIGINT NOT NULL,
    saga_id         TEXT,
    causation_id    TEXT,
    fact            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_history_by_order ON order_history (order_id, occurred_at_ms);

-- The next offset to apply per partition: the view reflects every record before it.
CREATE TABLE IF NOT EXISTS projection_position (
    topic           TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset     BIGINT NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);

-- The version of the projection code that built the model.
CREATE TABLE IF NOT EXISTS projection_meta (
    name          TEXT PRIMARY KEY,
    version       INTEGER NOT NULL,
    built_at_ms   BIGINT NOT NULL
);
