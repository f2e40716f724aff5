-- The transactional outbox in PostgreSQL's spelling (../sqlite/0003_outbox.sql has the
-- same tables; docs/outbox.md): BYTEA for the envelope, BIGINT for counters, DOUBLE
-- PRECISION for times. `rowid` is named as SQLite's implicit one so that one statement
-- reads pending rows in order on either backend; an identity value is taken at INSERT,
-- not at COMMIT, which is enough for the relay's order (see services/common/outbox.py).
CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY,
    aggregate_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    subject TEXT NOT NULL,
    envelope BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    sent_at DOUBLE PRECISION,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    UNIQUE (aggregate_id, sequence)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (rowid) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS outbox_sequences (
    aggregate_id TEXT PRIMARY KEY,
    last_sequence BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_relay_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
