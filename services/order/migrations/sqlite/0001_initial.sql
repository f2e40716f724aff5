-- The order service's tables as the code made them before migrations existed, statement for
-- statement. IF NOT EXISTS throughout: a database made by that code (or an older one, which
-- lacks some of these tables and indexes) is adopted as it is, keeping every row.
-- This is SQLite's spelling; ../postgresql/0001_initial.sql is PostgreSQL's.
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    cancel_reason TEXT NOT NULL DEFAULT '',
    total_minor INTEGER,
    currency TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (user_id, request_id)
);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, seq);
-- Partial indexes, small and cheap to keep: a user's open orders and recent declines, which
-- every CreateOrder counts (Quota); their WHERE must match the queries' word for word
-- (store.py's _DECLINED).
CREATE INDEX IF NOT EXISTS orders_pending ON orders (user_id) WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS orders_declined ON orders (user_id, updated_at) WHERE cancel_reason IN ('INSUFFICIENT_FUNDS', 'ACCOUNT_NOT_FOUND');
CREATE TABLE IF NOT EXISTS order_items (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    position INTEGER NOT NULL,
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    price_minor INTEGER,
    currency TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (order_id, position)
);
CREATE TABLE IF NOT EXISTS sagas (
    order_id TEXT PRIMARY KEY REFERENCES orders (order_id),
    phase TEXT NOT NULL,
    compensate_from TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    failure TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sagas_by_phase ON sagas (phase, updated_at);
-- Sagas the orchestrator stopped driving after a bounded number of failures that will not
-- pass by themselves (a capture of a voided payment, a bug): they wait for an operator.
-- A table of its own, not a column: a database made by an earlier version gains it as is.
CREATE TABLE IF NOT EXISTS parked_sagas (
    order_id TEXT PRIMARY KEY REFERENCES sagas (order_id),
    phase TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    parked_at REAL NOT NULL
);
-- Which instance drives each open saga (see the module docstring). A table of its own, for
-- the same reason as parked_sagas; a saga without a row here (older versions) is free.
CREATE TABLE IF NOT EXISTS saga_leases (
    order_id TEXT PRIMARY KEY REFERENCES sagas (order_id),
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
