-- The payment service's tables as the code made them before migrations existed, statement for
-- statement. IF NOT EXISTS throughout: a database made by that code (or an older one, made
-- before authorizations expired) is adopted as it is, keeping every row.
-- This is SQLite's spelling; ../postgresql/0001_initial.sql is PostgreSQL's.
CREATE TABLE IF NOT EXISTS accounts (
    user_id TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    available INTEGER NOT NULL CHECK (available >= 0),
    held INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    captured INTEGER NOT NULL DEFAULT 0 CHECK (captured >= 0)
);
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_by_state_and_age ON payments (state, updated_at);
-- One row per AUTHORIZED payment: when it gives its money back; deleted when the payment
-- leaves AUTHORIZED. A table of its own rather than a new column of payments: a database
-- made before expiry gains it as it is (0002_expire_old_authorizations then gives its
-- authorizations their expire time), as the order store's parked_sagas does; and the
-- sweeper's search walks only live authorizations.
CREATE TABLE IF NOT EXISTS authorization_expiry (
    order_id TEXT PRIMARY KEY REFERENCES payments (order_id),
    expire_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS authorization_expiry_by_time ON authorization_expiry (expire_at);
