"""Our stores' transactions in PostgreSQL's dialect, on two drivers behind one small
interface: what bench/pg_drivers.py times and tests/service/test_pg_races.py races.

The statements are a port of services/{order,inventory,payment}/store.py, as the
PostgreSQL backend would run them under READ COMMITTED (docs/postgres-concurrency.md says
why each is written so): a state change is a conditional UPDATE on the row itself
(`WHERE state = 'HELD'`), an id is claimed by `INSERT ... ON CONFLICT DO NOTHING` before
anything is moved, stock rows are locked in SKU order, the saga's fence locks the lease
row `FOR SHARE`, a user's orders are created under a per-user advisory lock (the quota
and the keyset order), and times compared across hosts are the database's.

Statements use `%s` placeholders (psycopg's); the asyncpg side numbers them ($1, $2, ...).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, cast

import asyncpg
import psycopg
import psycopg_pool

from services.order.domain import DECLINE_REASONS

_DECLINED = "cancel_reason IN ({})".format(", ".join(f"'{r}'" for r in DECLINE_REASONS))

ORDER_SCHEMA = f"""
CREATE TABLE orders (
    seq bigserial PRIMARY KEY,
    order_id text NOT NULL UNIQUE,
    user_id text NOT NULL,
    request_id text NOT NULL,
    fingerprint text NOT NULL,
    state text NOT NULL,
    cancel_reason text NOT NULL DEFAULT '',
    total_minor bigint,
    currency text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (user_id, request_id)
);
CREATE INDEX orders_by_user ON orders (user_id, seq);
CREATE INDEX orders_pending ON orders (user_id) WHERE state = 'PENDING';
CREATE INDEX orders_declined ON orders (user_id, updated_at) WHERE {_DECLINED};
CREATE TABLE order_items (
    order_id text NOT NULL REFERENCES orders (order_id),
    position integer NOT NULL,
    sku text NOT NULL,
    quantity integer NOT NULL,
    price_minor bigint,
    currency text NOT NULL DEFAULT '',
    PRIMARY KEY (order_id, position)
);
CREATE TABLE sagas (
    order_id text PRIMARY KEY REFERENCES orders (order_id),
    phase text NOT NULL,
    compensate_from text NOT NULL DEFAULT '',
    cancel_requested boolean NOT NULL DEFAULT false,
    failure text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL
);
CREATE INDEX sagas_by_phase ON sagas (phase, updated_at);
CREATE TABLE parked_sagas (
    seq bigserial UNIQUE,
    order_id text PRIMARY KEY REFERENCES sagas (order_id),
    phase text NOT NULL,
    reason text NOT NULL,
    detail text NOT NULL,
    parked_at timestamptz NOT NULL
);
CREATE TABLE saga_leases (
    order_id text PRIMARY KEY REFERENCES sagas (order_id),
    owner text NOT NULL,
    epoch integer NOT NULL,
    expires_at timestamptz NOT NULL
);
"""

INVENTORY_SCHEMA = """
CREATE TABLE products (
    sku text PRIMARY KEY,
    name text NOT NULL,
    price_minor bigint NOT NULL CHECK (price_minor >= 0),
    currency text NOT NULL,
    available bigint NOT NULL CHECK (available >= 0),
    held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    sold bigint NOT NULL DEFAULT 0 CHECK (sold >= 0)
);
CREATE TABLE reservations (
    order_id text PRIMARY KEY,
    user_id text NOT NULL,
    state text NOT NULL,
    fingerprint text NOT NULL,
    expire_at timestamptz NOT NULL
);
CREATE INDEX reservations_by_expiry ON reservations (state, expire_at);
CREATE TABLE reservation_items (
    order_id text NOT NULL REFERENCES reservations (order_id),
    sku text NOT NULL REFERENCES products (sku),
    quantity integer NOT NULL CHECK (quantity > 0),
    price_minor bigint NOT NULL,
    currency text NOT NULL,
    PRIMARY KEY (order_id, sku)
);
"""

PAYMENT_SCHEMA = """
CREATE TABLE accounts (
    user_id text PRIMARY KEY,
    currency text NOT NULL,
    available bigint NOT NULL CHECK (available >= 0),
    held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    captured bigint NOT NULL DEFAULT 0 CHECK (captured >= 0)
);
CREATE TABLE payments (
    order_id text PRIMARY KEY,
    user_id text NOT NULL,
    amount_minor bigint NOT NULL,
    currency text NOT NULL,
    state text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX payments_by_state_and_age ON payments (state, updated_at);
CREATE TABLE authorization_expiry (
    order_id text PRIMARY KEY REFERENCES payments (order_id),
    expire_at timestamptz NOT NULL
);
CREATE INDEX authorization_expiry_by_time ON authorization_expiry (expire_at);
"""

SCHEMAS = {"orders": ORDER_SCHEMA, "inventory": INVENTORY_SCHEMA, "payment": PAYMENT_SCHEMA}
TABLES = {
    "orders": "orders, order_items, sagas, parked_sagas, saga_leases",
    "inventory": "reservations, reservation_items",
    "payment": "payments, authorization_expiry",
}


class Conn(Protocol):
    """One connection, as the store code sees it, whichever the driver."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Runs a statement; the number of rows it touched (or returned)."""

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Pool(Protocol):
    name: str

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Conn]: ...

    def read(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        """A connection for one statement outside a transaction (autocommit)."""

    async def close(self) -> None: ...


async def fetchone(conn: Conn, sql: str, *args: Any) -> Sequence[Any] | None:
    rows = await conn.fetch(sql, *args)
    return rows[0] if rows else None


@functools.cache
def numbered(sql: str) -> str:
    """`%s` placeholders as asyncpg's `$1, $2, ...`."""
    counter = iter(range(1, 1000))
    return re.sub(r"%s", lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class AsyncpgConn:
    def __init__(self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._conn.execute(numbered(sql), *args))

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        # asyncpg's Records index like tuples; not copied, so neither driver pays extra.
        return cast(list[Sequence[Any]], await self._conn.fetch(numbered(sql), *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(numbered(sql), rows)


class AsyncpgPool:
    """asyncpg's own pool. `reset=False` skips the reset query asyncpg runs on every
    release by default (RESET ALL, UNLISTEN *, ...: one more round trip per use)."""

    def __init__(self, name: str, pool: asyncpg.Pool) -> None:
        self.name = name
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, size: int, reset: bool = True) -> AsyncpgPool:
        async def no_reset(conn: asyncpg.Connection) -> None:
            return None

        pool = await asyncpg.create_pool(
            dsn, min_size=size, max_size=size, reset=None if reset else no_reset
        )
        return cls("asyncpg" if reset else "asyncpg-noreset", pool)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield AsyncpgConn(conn)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Conn]:
        async with self._pool.acquire() as conn:
            yield AsyncpgConn(conn)

    async def close(self) -> None:
        await self._pool.close()


class PsycopgConn:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._conn.execute(sql, args)
        return cursor.rowcount

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        cursor = await self._conn.execute(sql, args)
        return list(await cursor.fetchall())

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._conn.cursor() as cursor:
            await cursor.executemany(sql, rows)


class PsycopgPool:
    """psycopg 3's AsyncConnectionPool, connections in autocommit with explicit
    transactions (BEGIN ... COMMIT around each store call, as asyncpg's)."""

    def __init__(self, name: str, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        self.name = name
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, size: int, prepare_at_once: bool = False) -> PsycopgPool:
        """`prepare_at_once`: prepare every statement on its first execution, as asyncpg
        does (psycopg's default prepares a statement on the 5th)."""
        kwargs: dict[str, Any] = {"autocommit": True}
        if prepare_at_once:
            kwargs["prepare_threshold"] = 0
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            dsn, min_size=size, max_size=size, open=False, kwargs=kwargs
        )
        await pool.open(wait=True)
        return cls("psycopg-prepare0" if prepare_at_once else "psycopg", pool)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self._pool.connection() as conn, conn.transaction():
            yield PsycopgConn(conn)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Conn]:
        async with self._pool.connection() as conn:
            yield PsycopgConn(conn)

    async def close(self) -> None:
        await self._pool.close()


DRIVERS = ("asyncpg", "asyncpg-noreset", "psycopg")
# Only on request (--drivers): psycopg preparing every statement at once.
OTHER_DRIVERS = ("psycopg-prepare0",)


async def open_pool(driver: str, dsn: str, size: int) -> Pool:
    if driver.startswith("psycopg"):
        return await PsycopgPool.open(dsn, size, prepare_at_once=driver == "psycopg-prepare0")
    return await AsyncpgPool.open(dsn, size, reset=driver == "asyncpg")


# The stores' write transactions, one function each (the body of one `transaction()`).
# Each returns what the caller needs next; a refusal the real store would raise is
# returned as a string, since the benchmark only counts.


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
    """OrderStore.create: (order id, created). A repeat of the request id answers the
    order it made, also when the first is committed while this one runs."""
    # One user's creates run one after another: the quota is counted by the only writer
    # of the user's orders, and `seq` follows commit order within a user (keyset pages).
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", user_id)
    found = await fetchone(
        conn,
        "SELECT order_id FROM orders WHERE user_id = %s AND request_id = %s",
        user_id,
        request_id,
    )
    if found is not None:
        return found[0], False
    [[open_orders]] = await conn.fetch(
        "SELECT count(*) FROM orders WHERE user_id = %s AND state = 'PENDING'", user_id
    )
    if open_orders >= max_open_orders:
        return "TOO_MANY_OPEN_ORDERS", False
    await conn.fetch(
        "SELECT count(*), min(updated_at) FROM orders WHERE user_id = %s"
        f" AND updated_at > now() - interval '1 hour' AND {_DECLINED}",
        user_id,
    )
    fingerprint = ",".join(f"{sku}x{n}" for sku, n in sorted(items))
    inserted = await conn.execute(
        "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state, created_at,"
        " updated_at) VALUES (%s, %s, %s, %s, 'PENDING', now(), now())"
        " ON CONFLICT (user_id, request_id) DO NOTHING",
        order_id,
        user_id,
        request_id,
        fingerprint,
    )
    if not inserted:  # unreachable under the user's lock; kept for a caller without it
        [[existing]] = await conn.fetch(
            "SELECT order_id FROM orders WHERE user_id = %s AND request_id = %s",
            user_id,
            request_id,
        )
        return existing, False
    await conn.executemany(
        "INSERT INTO order_items (order_id, position, sku, quantity) VALUES (%s, %s, %s, %s)",
        [(order_id, n, sku, q) for n, (sku, q) in enumerate(items)],
    )
    await conn.execute(
        "INSERT INTO sagas (order_id, phase, updated_at) VALUES (%s, 'STARTED', now())",
        order_id,
    )
    await conn.execute(
        "INSERT INTO saga_leases (order_id, owner, epoch, expires_at)"
        " VALUES (%s, %s, 1, clock_timestamp() + make_interval(secs => %s))",
        order_id,
        owner,
        lease_seconds,
    )
    return order_id, True


async def fence(conn: Conn, order_id: str, owner: str, epoch: int) -> bool:
    """The saga's fence: the lease must be (owner, epoch), and stays so until this
    transaction ends (FOR SHARE makes a concurrent acquire wait for it)."""
    return bool(
        await conn.fetch(
            "SELECT 1 FROM saga_leases WHERE order_id = %s AND owner = %s AND epoch = %s FOR SHARE",
            order_id,
            owner,
            epoch,
        )
    )


async def record_reserved(
    conn: Conn, order_id: str, owner: str, epoch: int, priced: Sequence[tuple[str, int, int]]
) -> bool:
    """OrderStore.record_reserved: STARTED -> RESERVED with the prices (sku, qty, price)."""
    if not await fence(conn, order_id, owner, epoch):
        return False
    moved = await conn.execute(
        "UPDATE sagas SET phase = 'RESERVED', updated_at = now()"
        " WHERE order_id = %s AND phase = 'STARTED'",
        order_id,
    )
    if not moved:
        return False
    await conn.executemany(
        "UPDATE order_items SET price_minor = %s, currency = 'USD' WHERE order_id = %s"
        " AND sku = %s",
        [(price, order_id, sku) for sku, _, price in priced],
    )
    await conn.execute(
        "UPDATE orders SET total_minor = %s, currency = 'USD', updated_at = now()"
        " WHERE order_id = %s",
        sum(q * price for _, q, price in priced),
        order_id,
    )
    return True


async def advance(conn: Conn, order_id: str, owner: str, epoch: int) -> bool:
    """OrderStore.advance to the pivot: RESERVED -> COMMITTING unless a cancel was asked."""
    if not await fence(conn, order_id, owner, epoch):
        return False
    return bool(
        await conn.execute(
            "UPDATE sagas SET phase = 'COMMITTING', updated_at = now()"
            " WHERE order_id = %s AND phase = 'RESERVED' AND NOT cancel_requested",
            order_id,
        )
    )


async def finish(conn: Conn, order_id: str, owner: str, epoch: int) -> bool:
    """OrderStore.finish from COMMITTING: CONFIRMED, the lease row gone."""
    if not await fence(conn, order_id, owner, epoch):
        return False
    moved = await conn.execute(
        "UPDATE sagas SET phase = 'CONFIRMED', updated_at = now()"
        " WHERE order_id = %s AND phase = 'COMMITTING'",
        order_id,
    )
    if not moved:
        return False
    await conn.execute("DELETE FROM saga_leases WHERE order_id = %s", order_id)
    await conn.execute(
        "UPDATE orders SET state = 'CONFIRMED', cancel_reason = '', updated_at = now()"
        " WHERE order_id = %s",
        order_id,
    )
    return True


async def acquire_lease(conn: Conn, order_id: str, owner: str, lease_seconds: float) -> int | None:
    """OrderStore.acquire in one statement: the new epoch, or None if another holds it.
    The condition is on the lease row itself, so a concurrent acquire that committed
    first is seen (READ COMMITTED re-checks the updated row) and this one gets nothing."""
    rows = await conn.fetch(
        "INSERT INTO saga_leases AS l (order_id, owner, epoch, expires_at)"
        " VALUES (%s, %s, 1, clock_timestamp() + make_interval(secs => %s))"
        " ON CONFLICT (order_id) DO UPDATE"
        " SET owner = excluded.owner, epoch = l.epoch + 1, expires_at = excluded.expires_at"
        " WHERE l.owner = excluded.owner OR l.expires_at <= clock_timestamp()"
        " RETURNING epoch",
        order_id,
        owner,
        lease_seconds,
    )
    return int(rows[0][0]) if rows else None


async def read_saga(conn: Conn, order_id: str) -> Sequence[Any] | None:
    return await fetchone(
        conn,
        "SELECT s.phase, s.compensate_from, s.cancel_requested, s.failure,"
        " p.order_id IS NOT NULL FROM sagas s LEFT JOIN parked_sagas p USING (order_id)"
        " WHERE s.order_id = %s",
        order_id,
    )


async def read_order(conn: Conn, order_id: str) -> list[Sequence[Any]]:
    """The order and its items in one statement: one snapshot, no transaction needed."""
    return await conn.fetch(
        "SELECT o.seq, o.user_id, o.request_id, o.state, o.cancel_reason, o.total_minor,"
        " o.currency, o.created_at, o.updated_at, i.sku, i.quantity, i.price_minor,"
        " i.currency FROM orders o JOIN order_items i USING (order_id)"
        " WHERE o.order_id = %s ORDER BY i.position",
        order_id,
    )


async def expire_due_holds(conn: Conn) -> int:
    """Inventory's _expire_due: the state change first, on the rows themselves, so that
    two sweepers (or a sweeper and a commit) never give the same hold back twice; rows
    another transaction has locked are skipped (it is committing or releasing them, or
    the next sweep takes them), so a sweep never waits and never deadlocks on them. The
    stock then in SKU order, the order every reservation locks products in."""
    due = await conn.fetch(
        "UPDATE reservations SET state = 'EXPIRED' WHERE order_id IN (SELECT order_id"
        " FROM reservations WHERE state = 'HELD' AND expire_at <= now()"
        " FOR UPDATE SKIP LOCKED) RETURNING order_id"
    )
    if due:
        ids = [row[0] for row in due]
        for sku, quantity in await conn.fetch(
            "SELECT sku, sum(quantity) FROM reservation_items WHERE order_id = ANY(%s)"
            " GROUP BY sku ORDER BY sku",
            ids,
        ):
            await conn.execute(
                "UPDATE products SET held = held - %s, available = available + %s WHERE sku = %s",
                quantity,
                quantity,
                sku,
            )
    return len(due)


async def reserve(
    conn: Conn,
    order_id: str,
    user_id: str,
    items: Sequence[tuple[str, int]],
    *,
    hold_seconds: float,
    sort_skus: bool = True,
) -> list[tuple[str, int, int]] | str:
    """InventoryStore.reserve: the priced items held, or why not. The order id is
    claimed first: a concurrent repeat waits for it here, then answers what it made."""
    await expire_due_holds(conn)
    fingerprint = ",".join(f"{sku}x{n}" for sku, n in sorted(items))
    claimed = await conn.execute(
        "INSERT INTO reservations (order_id, user_id, state, fingerprint, expire_at)"
        " VALUES (%s, %s, 'HELD', %s, now() + make_interval(secs => %s))"
        " ON CONFLICT (order_id) DO NOTHING",
        order_id,
        user_id,
        fingerprint,
        hold_seconds,
    )
    if not claimed:
        return "EXISTING"
    skus = [sku for sku, _ in items]
    known = await conn.fetch("SELECT sku FROM products WHERE sku = ANY(%s)", skus)
    if len(known) != len(set(skus)):
        raise LookupError("UNKNOWN_SKU")
    priced = []
    for sku, quantity in sorted(items) if sort_skus else items:
        taken = await fetchone(
            conn,
            "UPDATE products SET available = available - %s, held = held + %s"
            " WHERE sku = %s AND available >= %s RETURNING price_minor",
            quantity,
            quantity,
            sku,
            quantity,
        )
        if taken is None:
            raise LookupError("OUT_OF_STOCK")  # rolls the claim back with the transaction
        priced.append((sku, quantity, int(taken[0])))
    await conn.executemany(
        "INSERT INTO reservation_items (order_id, sku, quantity, price_minor, currency)"
        " VALUES (%s, %s, %s, %s, 'USD')",
        [(order_id, sku, q, price) for sku, q, price in priced],
    )
    return priced


async def commit_reservation(conn: Conn, order_id: str, user_id: str) -> bool:
    """InventoryStore.commit: HELD -> COMMITTED on the row itself, then the stock."""
    await expire_due_holds(conn)
    if not await conn.execute(
        "UPDATE reservations SET state = 'COMMITTED'"
        " WHERE order_id = %s AND user_id = %s AND state = 'HELD'",
        order_id,
        user_id,
    ):
        return False  # a repeat (already COMMITTED) or too late (EXPIRED, RELEASED)
    for sku, quantity in await conn.fetch(
        "SELECT sku, quantity FROM reservation_items WHERE order_id = %s ORDER BY sku",
        order_id,
    ):
        await conn.execute(
            "UPDATE products SET held = held - %s, sold = sold + %s WHERE sku = %s",
            quantity,
            quantity,
            sku,
        )
    return True


async def expire_due_authorizations(conn: Conn) -> int:
    """Payment's _expire_due: the payment's state first, on its row (a second sweeper,
    or a capture that won, leaves it unchanged), skipping rows another transaction holds;
    then accounts in user order, then the expiry rows: payments, accounts, expiry is the
    order authorize and capture lock them in too, so none of them can deadlock."""
    due = await conn.fetch(
        "UPDATE payments SET state = 'EXPIRED', updated_at = now() WHERE order_id IN"
        " (SELECT p.order_id FROM authorization_expiry e JOIN payments p USING (order_id)"
        " WHERE e.expire_at <= now() AND p.state = 'AUTHORIZED' FOR UPDATE OF p SKIP LOCKED)"
        " RETURNING order_id, user_id, amount_minor"
    )
    for _, user_id, amount in sorted((str(o), str(u), int(a)) for o, u, a in due):
        await conn.execute(
            "UPDATE accounts SET held = held - %s, available = available + %s WHERE user_id = %s",
            amount,
            amount,
            user_id,
        )
    if due:
        await conn.execute(
            "DELETE FROM authorization_expiry WHERE order_id = ANY(%s)", [r[0] for r in due]
        )
    return len(due)


async def authorize(
    conn: Conn, order_id: str, user_id: str, amount: int, authorization_seconds: float
) -> str:
    """PaymentStore.authorize: AUTHORIZED, DECLINED or EXISTING (a repeat)."""
    await expire_due_authorizations(conn)
    claimed = await conn.execute(
        "INSERT INTO payments (order_id, user_id, amount_minor, currency, state,"
        " created_at, updated_at) VALUES (%s, %s, %s, 'USD', 'AUTHORIZED', now(), now())"
        " ON CONFLICT (order_id) DO NOTHING",
        order_id,
        user_id,
        amount,
    )
    if not claimed:
        return "EXISTING"
    account = await fetchone(conn, "SELECT currency FROM accounts WHERE user_id = %s", user_id)
    if account is None:
        raise LookupError("ACCOUNT_NOT_FOUND")
    held = await conn.execute(
        "UPDATE accounts SET available = available - %s, held = held + %s"
        " WHERE user_id = %s AND available >= %s",
        amount,
        amount,
        user_id,
        amount,
    )
    if not held:
        await conn.execute("UPDATE payments SET state = 'DECLINED' WHERE order_id = %s", order_id)
        return "DECLINED"
    await conn.execute(
        "INSERT INTO authorization_expiry (order_id, expire_at)"
        " VALUES (%s, now() + make_interval(secs => %s))",
        order_id,
        authorization_seconds,
    )
    return "AUTHORIZED"


async def capture(conn: Conn, order_id: str, user_id: str) -> bool:
    """PaymentStore.capture: AUTHORIZED -> CAPTURED on the row itself, then the money."""
    await expire_due_authorizations(conn)
    moved = await fetchone(
        conn,
        "UPDATE payments SET state = 'CAPTURED', updated_at = now()"
        " WHERE order_id = %s AND user_id = %s AND state = 'AUTHORIZED' RETURNING amount_minor",
        order_id,
        user_id,
    )
    if moved is None:
        return False
    await conn.execute(
        "UPDATE accounts SET held = held - %s, captured = captured + %s WHERE user_id = %s",
        moved[0],
        moved[0],
        user_id,
    )
    await conn.execute("DELETE FROM authorization_expiry WHERE order_id = %s", order_id)
    return True


async def release_reservation(conn: Conn, order_id: str, user_id: str) -> str:
    """InventoryStore.release: RELEASED (stock given back), TOMBSTONE (there was no
    hold: a late reserve finds this and holds nothing), or the state it is in."""
    await expire_due_holds(conn)
    if await conn.execute(
        "INSERT INTO reservations (order_id, user_id, state, fingerprint, expire_at)"
        " VALUES (%s, %s, 'RELEASED', '', now()) ON CONFLICT (order_id) DO NOTHING",
        order_id,
        user_id,
    ):
        return "TOMBSTONE"
    if not await conn.execute(
        "UPDATE reservations SET state = 'RELEASED'"
        " WHERE order_id = %s AND user_id = %s AND state = 'HELD'",
        order_id,
        user_id,
    ):
        [[state]] = await conn.fetch("SELECT state FROM reservations WHERE order_id = %s", order_id)
        return str(state)
    for sku, quantity in await conn.fetch(
        "SELECT sku, quantity FROM reservation_items WHERE order_id = %s ORDER BY sku",
        order_id,
    ):
        await conn.execute(
            "UPDATE products SET held = held - %s, available = available + %s WHERE sku = %s",
            quantity,
            quantity,
            sku,
        )
    return "RELEASED"


async def void_payment(conn: Conn, order_id: str, user_id: str) -> str:
    """PaymentStore.void: VOIDED (money given back), TOMBSTONE, or the state it is in."""
    await expire_due_authorizations(conn)
    if await conn.execute(
        "INSERT INTO payments (order_id, user_id, amount_minor, currency, state, created_at,"
        " updated_at) VALUES (%s, %s, 0, '', 'VOIDED', now(), now())"
        " ON CONFLICT (order_id) DO NOTHING",
        order_id,
        user_id,
    ):
        return "TOMBSTONE"
    moved = await fetchone(
        conn,
        "UPDATE payments SET state = 'VOIDED', updated_at = now()"
        " WHERE order_id = %s AND user_id = %s AND state = 'AUTHORIZED' RETURNING amount_minor",
        order_id,
        user_id,
    )
    if moved is None:
        [[state]] = await conn.fetch("SELECT state FROM payments WHERE order_id = %s", order_id)
        return str(state)
    await conn.execute(
        "UPDATE accounts SET held = held - %s, available = available + %s WHERE user_id = %s",
        moved[0],
        moved[0],
        user_id,
    )
    await conn.execute("DELETE FROM authorization_expiry WHERE order_id = %s", order_id)
    return "VOIDED"


async def request_cancel(conn: Conn, order_id: str) -> bool:
    """OrderStore.request_cancel: only before the pivot (one conditional UPDATE)."""
    return bool(
        await conn.execute(
            "UPDATE sagas SET cancel_requested = true, updated_at = now()"
            " WHERE order_id = %s AND phase IN ('STARTED', 'RESERVED', 'AUTHORIZED')",
            order_id,
        )
    )
