-- The notification service's tables in PostgreSQL's spelling: the same tables, columns and
-- indexes as ../sqlite/0001_initial.sql, with BIGINT for money, DOUBLE PRECISION for
-- times and an identity column for the sequence.
CREATE TABLE IF NOT EXISTS contacts (
    user_id TEXT PRIMARY KEY,
    email_address TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    order_state TEXT NOT NULL,
    total_minor BIGINT,
    currency TEXT NOT NULL DEFAULT '',
    cancel_reason TEXT NOT NULL DEFAULT '',
    email_address TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    message_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications (user_id, seq);
