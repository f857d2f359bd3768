-- Order saga v2: one fraud-risk assessment per order that was checked. A check sent again (a
-- retry after a timeout) answers from this row; reason is NULL when the risk was acceptable.
CREATE TABLE IF NOT EXISTS risk_assessments (
    order_id       TEXT PRIMARY KEY,
    customer_id    TEXT NOT NULL,
    amount_minor   BIGINT NOT NULL,
    currency       TEXT NOT NULL,
    score          INTEGER NOT NULL CHECK (score BETWEEN 0 AND 100),
    reason         TEXT,
    assessed_at_ms BIGINT NOT NULL
);
