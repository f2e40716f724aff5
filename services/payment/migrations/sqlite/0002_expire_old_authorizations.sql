-- Authorizations made before expiry existed have no expire time: each gets the one a caller
-- who names no duration got when expiry came in (default_authorization_seconds' default,
-- 86400 s), counted from when it was made. Before migrations the store ran this at every
-- start; a database made since then has a row for every authorization already, so here it
-- adds nothing. The SELECT skips what is there, so it may run again (a process killed after
-- applying it and before yoyo recorded that does) and it reads the same on PostgreSQL.
INSERT INTO authorization_expiry (order_id, expire_at)
SELECT order_id, updated_at + 86400 FROM payments
WHERE state = 'AUTHORIZED' AND order_id NOT IN (SELECT order_id FROM authorization_expiry);
