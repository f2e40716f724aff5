-- Each order's event log: every saga transition appends its fact here in the same write as
-- the transition (store.py's _append_event), so the log and the order row never disagree,
-- and replaying an order's entries rebuilds its row (history.py). `envelope` is the whole
-- serialized shop.events.v1.EventEnvelope; type and occurred_at are copies of two of its
-- fields for reading the log without decoding it. Numbered 0003, not 0002: migrations are
-- applied by name and yoyo applies any that a database lacks, whatever their number, so a
-- 0002 added later applies to a database that has this one.
-- This is SQLite's spelling; ../postgresql/0003_order_log.sql is PostgreSQL's.
CREATE TABLE IF NOT EXISTS order_events (
    order_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    occurred_at REAL NOT NULL,
    envelope BLOB NOT NULL,
    PRIMARY KEY (order_id, sequence)
);
-- The first order (by seq) whose whole life is in the log: an order made before this
-- migration has no OrderPlaced, so the rebuild (history.py) skips it. One row, written once.
CREATE TABLE IF NOT EXISTS order_log_start (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    first_seq INTEGER NOT NULL
);
INSERT INTO order_log_start (id, first_seq)
    SELECT 1, COALESCE(MAX(seq), 0) + 1 FROM orders WHERE true
    ON CONFLICT (id) DO NOTHING;
