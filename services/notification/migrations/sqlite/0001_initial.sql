-- The notification service's tables (SQLite's spelling; ../postgresql/0001_initial.sql is
-- PostgreSQL's). IF NOT EXISTS throughout, as every migration here is idempotent.
-- A user's contact address: where the notifications of their orders go.
CREATE TABLE IF NOT EXISTS contacts (
    user_id TEXT PRIMARY KEY,
    email_address TEXT NOT NULL,
    updated_at REAL NOT NULL
);
-- One row per order outcome told, recorded before the message is sent (the intent). The
-- event id and the order id are each UNIQUE: a redelivered event, or a second event of one
-- order's outcome, finds the row and never makes a second one. seq orders a user's list.
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    order_state TEXT NOT NULL,
    total_minor INTEGER,
    currency TEXT NOT NULL DEFAULT '',
    cancel_reason TEXT NOT NULL DEFAULT '',
    email_address TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    message_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications (user_id, seq);
