-- Customer accounts: authorizations may use credit up to the limit.
CREATE TABLE IF NOT EXISTS accounts (
    customer_id        TEXT PRIMARY KEY,
    currency           TEXT NOT NULL,
    credit_limit_minor BIGINT NOT NULL CHECK (credit_limit_minor >= 0),
    authorized_minor   BIGINT NOT NULL CHECK (authorized_minor >= 0),
    updated_at_ms      BIGINT NOT NULL
);

-- One row per order that asked: AUTHORIZED, DECLINED, or VOIDED (also when a void came first).
CREATE TABLE IF NOT EXISTS authorizations (
    order_id         TEXT PRIMARY KEY,
    authorization_id TEXT NOT NULL,
    customer_id      TEXT NOT NULL,
    amount_minor     BIGINT NOT NULL,
    currency         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('AUTHORIZED', 'DECLINED', 'VOIDED')),
    reason           TEXT,
    updated_at_ms    BIGINT NOT NULL
);
