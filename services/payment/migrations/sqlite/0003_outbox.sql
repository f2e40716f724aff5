-- The transactional outbox (services/common/outbox.py, docs/outbox.md): an event row is
-- written in the same transaction as the state change it reports, and the relay
-- (services/common/relay.py) publishes the pending ones, oldest first, and marks them sent.
-- The relay reads pending rows in rowid order (the index below holds them in it: every
-- SQLite index ends with the rowid); writes are serialized here, so that is commit order.
CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY,
    aggregate_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    subject TEXT NOT NULL,
    envelope BLOB NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (aggregate_id, sequence)
);
CREATE INDEX IF NOT EXISTS outbox_by_sent ON outbox (sent_at);
-- Each aggregate's last sequence number: one upsert takes the next. Kept when its events
-- are pruned, or the numbers would start again.
CREATE TABLE IF NOT EXISTS outbox_sequences (
    aggregate_id TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL
);
-- The relay's lease: one row, so one relay publishes from this outbox at a time.
CREATE TABLE IF NOT EXISTS outbox_relay_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
