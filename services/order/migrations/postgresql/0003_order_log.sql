-- Each order's event log, in PostgreSQL's spelling: the same tables and columns as
-- ../sqlite/0003_order_log.sql (whose comments say what they hold), BIGINT for counts,
-- DOUBLE PRECISION for times, BYTEA for the serialized envelope.
CREATE TABLE IF NOT EXISTS order_events (
    order_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    occurred_at DOUBLE PRECISION NOT NULL,
    envelope BYTEA NOT NULL,
    PRIMARY KEY (order_id, sequence)
);
CREATE TABLE IF NOT EXISTS order_log_start (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    first_seq BIGINT NOT NULL
);
INSERT INTO order_log_start (id, first_seq)
    SELECT 1, COALESCE(MAX(seq), 0) + 1 FROM orders
    ON CONFLICT (id) DO NOTHING;
