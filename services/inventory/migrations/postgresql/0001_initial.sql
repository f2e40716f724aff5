-- The inventory service's tables in PostgreSQL's spelling: the same tables, columns and
-- indexes as ../sqlite/0001_initial.sql, with the types PostgreSQL needs (docs/architecture.md,
-- "Schema migrations"): BIGINT for counts and money (INTEGER is 32-bit here), DOUBLE
-- PRECISION for times (REAL is 4-byte here), identity columns for sequences.
CREATE TABLE IF NOT EXISTS products (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_minor BIGINT NOT NULL CHECK (price_minor >= 0),
    currency TEXT NOT NULL,
    available BIGINT NOT NULL CHECK (available >= 0),
    held BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    sold BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0)
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    state TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    expire_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_by_expiry ON reservations (state, expire_at);
CREATE TABLE IF NOT EXISTS reservation_items (
    order_id TEXT NOT NULL REFERENCES reservations (order_id),
    sku TEXT NOT NULL REFERENCES products (sku),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    price_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    PRIMARY KEY (order_id, sku)
);
CREATE TABLE IF NOT EXISTS restocks (
    request_id TEXT PRIMARY KEY,
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL
);
