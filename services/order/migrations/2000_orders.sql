-- One row per order. PENDING is the saga's semantic lock: nothing else may change the order
-- until its saga approves or rejects it.
CREATE TABLE IF NOT EXISTS orders (
    order_id      TEXT PRIMARY KEY,
    customer_id   TEXT NOT NULL,
    currency      TEXT NOT NULL,
    total_minor   BIGINT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED')),
    reason        TEXT,
    lines         TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
