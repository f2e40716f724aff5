-- The payment service's tables in PostgreSQL's spelling: the same tables, columns and
-- indexes as ../sqlite/0001_initial.sql, with the types PostgreSQL needs (docs/architecture.md,
-- "Schema migrations"): BIGINT for counts and money (INTEGER is 32-bit here), DOUBLE
-- PRECISION for times (REAL is 4-byte here), identity columns for sequences.
CREATE TABLE IF NOT EXISTS accounts (
    user_id TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    available BIGINT NOT NULL CHECK (available >= 0),
    held BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    captured BIGINT NOT NULL DEFAULT 0 CHECK (captured >= 0)
);
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_by_state_and_age ON payments (state, updated_at);
CREATE TABLE IF NOT EXISTS authorization_expiry (
    order_id TEXT PRIMARY KEY REFERENCES payments (order_id),
    expire_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS authorization_expiry_by_time ON authorization_expiry (expire_at);
