-- The inventory service's tables as the code made them before migrations existed, statement
-- for statement. IF NOT EXISTS throughout: a database made by that code is adopted as it is,
-- keeping every row.
-- This is SQLite's spelling; ../postgresql/0001_initial.sql is PostgreSQL's.
CREATE TABLE IF NOT EXISTS products (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_minor INTEGER NOT NULL CHECK (price_minor >= 0),
    currency TEXT NOT NULL,
    available INTEGER NOT NULL CHECK (available >= 0),
    held INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    sold INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0)
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    state TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    expire_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_by_expiry ON reservations (state, expire_at);
CREATE TABLE IF NOT EXISTS reservation_items (
    order_id TEXT NOT NULL REFERENCES reservations (order_id),
    sku TEXT NOT NULL REFERENCES products (sku),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    price_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    PRIMARY KEY (order_id, sku)
);
CREATE TABLE IF NOT EXISTS restocks (
    request_id TEXT PRIMARY KEY,
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL
);
