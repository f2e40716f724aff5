-- When each event was applied (the applying transaction's time, seconds since the epoch):
-- with the producer's outbox row's created_at, the event's lag from commit to the read
-- model (`make bench` reports it). Not part of the read model: a rebuild applies the same
-- events at other times. Rows applied before this column existed have none.
-- ../sqlite/0002_applied_at.sql is SQLite's spelling.
ALTER TABLE applied_events ADD COLUMN IF NOT EXISTS applied_at DOUBLE PRECISION;
