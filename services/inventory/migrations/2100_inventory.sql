-- Stock per sku. A reservation moves units from on_hand to reserved; a release moves them back.
-- on_hand + reserved stays constant per sku except when stock is seeded or adjusted.
CREATE TABLE IF NOT EXISTS stock (
    sku           TEXT PRIMARY KEY,
    on_hand       BIGINT NOT NULL CHECK (on_hand >= 0),
    reserved      BIGINT NOT NULL CHECK (reserved >= 0),
    updated_at_ms BIGINT NOT NULL
);

-- One row per order that asked: RESERVED, FAILED, or RELEASED (also when a release came first,
-- so that a late ReserveStock after compensation reserves nothing).
CREATE TABLE IF NOT EXISTS reservations (
    order_id      TEXT PRIMARY KEY,
    status        TEXT NOT NULL CHECK (status IN ('RESERVED', 'FAILED', 'RELEASED')),
    lines         TEXT NOT NULL,
    reason        TEXT,
    updated_at_ms BIGINT NOT NULL
);
