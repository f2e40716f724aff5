"""bench/pg_sql.py's eight write transactions again, each as one PL/pgSQL function: what
`asyncpg-functions` in bench/pg_drivers.py times against the statement-by-statement port.

The question they answer: how much of PostgreSQL's cost per order is round trips. Called
as one `SELECT` in autocommit, a function is its own transaction, so a write costs one
round trip instead of BEGIN, its 2 to 8 statements and COMMIT. The bodies run the same
statements with the same semantics as pg_sql.py's (docs/postgres-concurrency.md): the
per-user advisory lock (transaction-scoped, so held until the call's commit), conditional
UPDATEs on the rows themselves, the claim by `INSERT ... ON CONFLICT DO NOTHING`, stock
locked in SKU order, the lease fence `FOR SHARE`, the expiry sweeps with `SKIP LOCKED`.
Each reads the clock once (`clock_timestamp()`, as the stores' `Tx.now()` does) and uses
that moment for every time it writes.

Two properties of PL/pgSQL keep the semantics those of separate statements: the functions
are VOLATILE (the default), so under READ COMMITTED every statement in them takes a new
snapshot (the create that waited for a user's lock sees what the holder committed); and
none has an EXCEPTION block, so none opens a subtransaction. A refusal the Python port
raises (UNKNOWN_SKU, OUT_OF_STOCK, ACCOUNT_NOT_FOUND) is `RAISE EXCEPTION`, which rolls
the whole call back as the exception rolls back the Python port's transaction.

Differences in spelling only: pg_sql.py's `executemany` of N rows is one statement over
`unnest` here; the SKU check counts instead of fetching the rows; the sweep's refunds go
in user order (pg_sql.py's docstring says so; its code sorts by order id, which is the
same for the one refund a sweep could find in this benchmark: holds last 600 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import psycopg

from bench.pg_sql import _DECLINED, Conn

ORDER_FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION bench_fence(p_order_id text, p_owner text, p_epoch integer)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    -- FOR SHARE: a concurrent acquire of the lease waits for this transaction to end.
    PERFORM 1 FROM saga_leases l
    WHERE l.order_id = p_order_id AND l.owner = p_owner AND l.epoch = p_epoch FOR SHARE;
    RETURN FOUND;
END $$;

CREATE OR REPLACE FUNCTION bench_create_order(
    p_order_id text, p_user_id text, p_request_id text, p_skus text[],
    p_quantities integer[], p_owner text, p_lease_seconds double precision,
    p_max_open_orders bigint, OUT made_order_id text, OUT created boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_open bigint;
BEGIN
    created := false;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_user_id, 0));
    SELECT o.order_id INTO made_order_id FROM orders o
    WHERE o.user_id = p_user_id AND o.request_id = p_request_id;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT count(*) INTO v_open FROM orders o
    WHERE o.user_id = p_user_id AND o.state = 'PENDING';
    IF v_open >= p_max_open_orders THEN
        made_order_id := 'TOO_MANY_OPEN_ORDERS';
        RETURN;
    END IF;
    PERFORM count(*), min(o.updated_at) FROM orders o
    WHERE o.user_id = p_user_id AND o.updated_at > v_now - interval '1 hour'
      AND {_DECLINED};
    INSERT INTO orders (order_id, user_id, request_id, fingerprint, state, created_at,
                        updated_at)
    SELECT p_order_id, p_user_id, p_request_id,
           string_agg(t.sku || 'x' || t.q, ',' ORDER BY t.sku, t.q), 'PENDING', v_now, v_now
    FROM unnest(p_skus, p_quantities) AS t(sku, q)
    ON CONFLICT (user_id, request_id) DO NOTHING;
    IF NOT FOUND THEN  -- unreachable under the user's lock, as in pg_sql.py
        SELECT o.order_id INTO made_order_id FROM orders o
        WHERE o.user_id = p_user_id AND o.request_id = p_request_id;
        RETURN;
    END IF;
    INSERT INTO order_items (order_id, position, sku, quantity)
    SELECT p_order_id, t.n - 1, t.sku, t.q
    FROM unnest(p_skus, p_quantities) WITH ORDINALITY AS t(sku, q, n);
    INSERT INTO sagas (order_id, phase, updated_at) VALUES (p_order_id, 'STARTED', v_now);
    INSERT INTO saga_leases (order_id, owner, epoch, expires_at)
    VALUES (p_order_id, p_owner, 1, v_now + make_interval(secs => p_lease_seconds));
    made_order_id := p_order_id;
    created := true;
END $$;

CREATE OR REPLACE FUNCTION bench_record_reserved(
    p_order_id text, p_owner text, p_epoch integer, p_skus text[], p_quantities integer[],
    p_prices bigint[]
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    IF NOT bench_fence(p_order_id, p_owner, p_epoch) THEN
        RETURN false;
    END IF;
    UPDATE sagas SET phase = 'RESERVED', updated_at = v_now
    WHERE order_id = p_order_id AND phase = 'STARTED';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE order_items i SET price_minor = t.price, currency = 'USD'
    FROM unnest(p_skus, p_prices) AS t(sku, price)
    WHERE i.order_id = p_order_id AND i.sku = t.sku;
    UPDATE orders SET currency = 'USD', updated_at = v_now,
        total_minor = (SELECT sum(t.q * t.price)
                       FROM unnest(p_quantities, p_prices) AS t(q, price))
    WHERE order_id = p_order_id;
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION bench_advance(p_order_id text, p_owner text, p_epoch integer)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    IF NOT bench_fence(p_order_id, p_owner, p_epoch) THEN
        RETURN false;
    END IF;
    UPDATE sagas SET phase = 'COMMITTING', updated_at = v_now
    WHERE order_id = p_order_id AND phase = 'RESERVED' AND NOT cancel_requested;
    RETURN FOUND;
END $$;

CREATE OR REPLACE FUNCTION bench_finish(p_order_id text, p_owner text, p_epoch integer)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    IF NOT bench_fence(p_order_id, p_owner, p_epoch) THEN
        RETURN false;
    END IF;
    UPDATE sagas SET phase = 'CONFIRMED', updated_at = v_now
    WHERE order_id = p_order_id AND phase = 'COMMITTING';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM saga_leases WHERE order_id = p_order_id;
    UPDATE orders SET state = 'CONFIRMED', cancel_reason = '', updated_at = v_now
    WHERE order_id = p_order_id;
    RETURN true;
END $$;
"""

INVENTORY_FUNCTIONS = """
CREATE OR REPLACE FUNCTION bench_expire_due_holds(p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
    v_sku text;
    v_quantity bigint;
BEGIN
    -- The state change first, on the rows themselves, skipping rows another holds.
    WITH due AS (
        UPDATE reservations SET state = 'EXPIRED' WHERE order_id IN (
            SELECT order_id FROM reservations
            WHERE state = 'HELD' AND expire_at <= p_now FOR UPDATE SKIP LOCKED)
        RETURNING order_id)
    SELECT array_agg(order_id) INTO v_ids FROM due;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    FOR v_sku, v_quantity IN
        SELECT sku, sum(quantity) FROM reservation_items WHERE order_id = ANY(v_ids)
        GROUP BY sku ORDER BY sku
    LOOP
        UPDATE products SET held = held - v_quantity, available = available + v_quantity
        WHERE sku = v_sku;
    END LOOP;
    RETURN cardinality(v_ids);
END $$;

CREATE OR REPLACE FUNCTION bench_reserve(
    p_order_id text, p_user_id text, p_skus text[], p_quantities integer[],
    p_hold_seconds double precision,
    OUT status text, OUT skus text[], OUT quantities integer[], OUT prices bigint[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_sku text;
    v_quantity integer;
    v_price bigint;
BEGIN
    PERFORM bench_expire_due_holds(v_now);
    -- The order id is claimed first: a concurrent repeat waits here, then finds it.
    INSERT INTO reservations (order_id, user_id, state, fingerprint, expire_at)
    SELECT p_order_id, p_user_id, 'HELD',
           string_agg(t.sku || 'x' || t.q, ',' ORDER BY t.sku, t.q),
           v_now + make_interval(secs => p_hold_seconds)
    FROM unnest(p_skus, p_quantities) AS t(sku, q)
    ON CONFLICT (order_id) DO NOTHING;
    IF NOT FOUND THEN
        status := 'EXISTING';
        RETURN;
    END IF;
    IF (SELECT count(*) FROM products WHERE sku = ANY(p_skus))
       <> (SELECT count(DISTINCT s) FROM unnest(p_skus) AS s) THEN
        RAISE EXCEPTION 'UNKNOWN_SKU';
    END IF;
    skus := '{}';
    quantities := '{}';
    prices := '{}';
    FOR v_sku, v_quantity IN
        SELECT t.sku, t.q FROM unnest(p_skus, p_quantities) AS t(sku, q)
        ORDER BY t.sku, t.q
    LOOP
        UPDATE products SET available = available - v_quantity, held = held + v_quantity
        WHERE sku = v_sku AND available >= v_quantity RETURNING price_minor INTO v_price;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'OUT_OF_STOCK';  -- rolls the claim back with the call
        END IF;
        skus := skus || v_sku;
        quantities := quantities || v_quantity;
        prices := prices || v_price;
    END LOOP;
    INSERT INTO reservation_items (order_id, sku, quantity, price_minor, currency)
    SELECT p_order_id, t.sku, t.q, t.price, 'USD'
    FROM unnest(skus, quantities, prices) AS t(sku, q, price);
    status := 'HELD';
END $$;

CREATE OR REPLACE FUNCTION bench_commit_reservation(p_order_id text, p_user_id text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_sku text;
    v_quantity integer;
BEGIN
    PERFORM bench_expire_due_holds(v_now);
    UPDATE reservations SET state = 'COMMITTED'
    WHERE order_id = p_order_id AND user_id = p_user_id AND state = 'HELD';
    IF NOT FOUND THEN
        RETURN false;  -- a repeat (already COMMITTED) or too late (EXPIRED, RELEASED)
    END IF;
    FOR v_sku, v_quantity IN
        SELECT sku, quantity FROM reservation_items WHERE order_id = p_order_id ORDER BY sku
    LOOP
        UPDATE products SET held = held - v_quantity, sold = sold + v_quantity
        WHERE sku = v_sku;
    END LOOP;
    RETURN true;
END $$;
"""

PAYMENT_FUNCTIONS = """
CREATE OR REPLACE FUNCTION bench_expire_due_authorizations(p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
    v_users text[];
    v_amounts bigint[];
BEGIN
    -- Payments, then accounts in user order, then the expiry rows: the order authorize
    -- and capture lock them in too.
    WITH due AS (
        UPDATE payments SET state = 'EXPIRED', updated_at = p_now WHERE order_id IN (
            SELECT p.order_id FROM authorization_expiry e JOIN payments p USING (order_id)
            WHERE e.expire_at <= p_now AND p.state = 'AUTHORIZED'
            FOR UPDATE OF p SKIP LOCKED)
        RETURNING order_id, user_id, amount_minor)
    SELECT array_agg(order_id ORDER BY user_id, order_id),
           array_agg(user_id ORDER BY user_id, order_id),
           array_agg(amount_minor ORDER BY user_id, order_id)
    INTO v_ids, v_users, v_amounts FROM due;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    FOR n IN 1 .. cardinality(v_ids) LOOP
        UPDATE accounts SET held = held - v_amounts[n], available = available + v_amounts[n]
        WHERE user_id = v_users[n];
    END LOOP;
    DELETE FROM authorization_expiry WHERE order_id = ANY(v_ids);
    RETURN cardinality(v_ids);
END $$;

CREATE OR REPLACE FUNCTION bench_authorize(
    p_order_id text, p_user_id text, p_amount bigint,
    p_authorization_seconds double precision
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM bench_expire_due_authorizations(v_now);
    INSERT INTO payments (order_id, user_id, amount_minor, currency, state, created_at,
                          updated_at)
    VALUES (p_order_id, p_user_id, p_amount, 'USD', 'AUTHORIZED', v_now, v_now)
    ON CONFLICT (order_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'EXISTING';
    END IF;
    PERFORM 1 FROM accounts WHERE user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ACCOUNT_NOT_FOUND';
    END IF;
    UPDATE accounts SET available = available - p_amount, held = held + p_amount
    WHERE user_id = p_user_id AND available >= p_amount;
    IF NOT FOUND THEN
        UPDATE payments SET state = 'DECLINED' WHERE order_id = p_order_id;
        RETURN 'DECLINED';
    END IF;
    INSERT INTO authorization_expiry (order_id, expire_at)
    VALUES (p_order_id, v_now + make_interval(secs => p_authorization_seconds));
    RETURN 'AUTHORIZED';
END $$;

CREATE OR REPLACE FUNCTION bench_capture(p_order_id text, p_user_id text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_amount bigint;
BEGIN
    PERFORM bench_expire_due_authorizations(v_now);
    UPDATE payments SET state = 'CAPTURED', updated_at = v_now
    WHERE order_id = p_order_id AND user_id = p_user_id AND state = 'AUTHORIZED'
    RETURNING amount_minor INTO v_amount;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE accounts SET held = held - v_amount, captured = captured + v_amount
    WHERE user_id = p_user_id;
    DELETE FROM authorization_expiry WHERE order_id = p_order_id;
    RETURN true;
END $$;
"""

FUNCTIONS = {
    "orders": ORDER_FUNCTIONS,
    "inventory": INVENTORY_FUNCTIONS,
    "payment": PAYMENT_FUNCTIONS,
}

# The messages a function raises for the refusals pg_sql.py raises as LookupError.
REFUSALS = frozenset({"UNKNOWN_SKU", "OUT_OF_STOCK", "ACCOUNT_NOT_FOUND"})


def refusal(error: Exception) -> str | None:
    """The refusal a function raised (RAISE EXCEPTION, SQLSTATE P0001), whichever the
    driver; None for any other error."""
    if isinstance(error, asyncpg.exceptions.RaiseError):
        message = error.message
    elif isinstance(error, psycopg.errors.RaiseException):
        message = error.diag.message_primary or ""
    else:
        return None
    return message if message in REFUSALS else None


async def _one(conn: Conn, sql: str, *args: Any) -> Sequence[Any]:
    """The call's one row; a refusal raised as pg_sql.py raises it (LookupError)."""
    try:
        [row] = await conn.fetch(sql, *args)
    except Exception as error:
        if (refused := refusal(error)) is not None:
            raise LookupError(refused) from error
        raise
    return row


# The same signatures and answers as pg_sql.py's, each one call (one round trip), meant
# for a connection in autocommit: the call is the transaction.


async def create_order(
    conn: Conn,
    order_id: str,
    user_id: str,
    request_id: str,
    items: Sequence[tuple[str, int]],
    *,
    owner: str,
    lease_seconds: float,
    max_open_orders: int = 1_000_000,
) -> tuple[str, bool]:
    row = await _one(
        conn,
        "SELECT made_order_id, created FROM bench_create_order(%s, %s, %s, %s, %s, %s, %s, %s)",
        *(order_id, user_id, request_id, [s for s, _ in items], [q for _, q in items]),
        *(owner, float(lease_seconds), max_open_orders),
    )
    return str(row[0]), bool(row[1])


async def record_reserved(
    conn: Conn, order_id: str, owner: str, epoch: int, priced: Sequence[tuple[str, int, int]]
) -> bool:
    row = await _one(
        conn,
        "SELECT bench_record_reserved(%s, %s, %s, %s, %s, %s)",
        *(order_id, owner, epoch, [s for s, _, _ in priced]),
        *([q for _, q, _ in priced], [p for _, _, p in priced]),
    )
    return bool(row[0])


async def advance(conn: Conn, order_id: str, owner: str, epoch: int) -> bool:
    return bool((await _one(conn, "SELECT bench_advance(%s, %s, %s)", order_id, owner, epoch))[0])


async def finish(conn: Conn, order_id: str, owner: str, epoch: int) -> bool:
    return bool((await _one(conn, "SELECT bench_finish(%s, %s, %s)", order_id, owner, epoch))[0])


async def reserve(
    conn: Conn,
    order_id: str,
    user_id: str,
    items: Sequence[tuple[str, int]],
    *,
    hold_seconds: float,
) -> list[tuple[str, int, int]] | str:
    status, skus, quantities, prices = await _one(
        conn,
        "SELECT status, skus, quantities, prices FROM bench_reserve(%s, %s, %s, %s, %s)",
        *(order_id, user_id, [s for s, _ in items], [q for _, q in items], float(hold_seconds)),
    )
    if status != "HELD":
        return str(status)
    return [(str(s), int(q), int(p)) for s, q, p in zip(skus, quantities, prices, strict=True)]


async def commit_reservation(conn: Conn, order_id: str, user_id: str) -> bool:
    row = await _one(conn, "SELECT bench_commit_reservation(%s, %s)", order_id, user_id)
    return bool(row[0])


async def authorize(
    conn: Conn, order_id: str, user_id: str, amount: int, authorization_seconds: float
) -> str:
    row = await _one(
        conn,
        "SELECT bench_authorize(%s, %s, %s, %s)",
        *(order_id, user_id, amount, float(authorization_seconds)),
    )
    return str(row[0])


async def capture(conn: Conn, order_id: str, user_id: str) -> bool:
    return bool((await _one(conn, "SELECT bench_capture(%s, %s)", order_id, user_id))[0])
