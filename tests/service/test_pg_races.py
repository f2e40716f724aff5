"""Each race of docs/postgres-concurrency.md on a real PostgreSQL 15, with two real
connections under READ COMMITTED (the default): first as a straight port of the SQLite
store would run it, then as bench/pg_sql.py (the port the PostgreSQL backend follows)
writes it. `make pg-races` runs this file alone.

Each race is scheduled, not left to chance: one connection takes its step and holds its
transaction open; the other's statement is started and observed *waiting on a lock* (in
pg_stat_activity, polled within a bound, never slept for); then the first commits and
the second's outcome is asserted. Each test's docstring is the claim; the doc cites the
tests by name."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import psycopg
import pytest
from psycopg import sql

from bench import pg_sql
from shopmesh.postgres import Cluster

DATABASE = "races"
LOCK_WAIT_TIMEOUT_SECONDS = 10.0
DEADLOCK_TIMEOUT = "100ms"
"""PostgreSQL's 1 s default would make the deadlock race wait a second for its 40P01; a
tenth of that still runs the same detector, after the same kind of wait."""
T = TypeVar("T")


@pytest.fixture(scope="module")
def races_dsn(postgres_cluster: Cluster) -> Iterator[str]:
    """A database with every service's tables (pg_sql.SCHEMAS), owned by its own role."""
    dsn = postgres_cluster.ensure_database(DATABASE)
    with postgres_cluster.admin() as admin:
        # deadlock_timeout is a superuser's setting: the role cannot SET it itself.
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET deadlock_timeout = {}").format(
                sql.Identifier(DATABASE), sql.Literal(DEADLOCK_TIMEOUT)
            )
        )
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in pg_sql.SCHEMAS.values():
            conn.execute(schema)
    yield dsn


@dataclass
class Races:
    """Two sessions (a, b) of two instances, a third that holds a lock both must pass
    (holder), and an observer (admin: it reads pg_stat_activity, whose view a session
    keeps for the whole of a transaction, so it never holds one open)."""

    a: asyncpg.Connection
    b: asyncpg.Connection
    holder: asyncpg.Connection
    admin: asyncpg.Connection

    async def waiting(self, conn: asyncpg.Connection) -> str:
        """Returns once `conn`'s backend waits on a lock: what it waits for (e.g.
        `transactionid`, `advisory`)."""
        pid = conn.get_server_pid()
        deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            row = await self.admin.fetchrow(
                "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = $1", pid
            )
            if row is not None and row["wait_event_type"] == "Lock":
                return str(row["wait_event"])
            await asyncio.sleep(0.005)
        raise AssertionError(f"backend {pid} never waited on a lock")

    async def blocked_then(
        self,
        holder: asyncpg.Connection,
        waiter: Awaitable[T],
        waiter_conn: asyncpg.Connection,
        lock: str = "transactionid",
    ) -> T:
        """Starts `waiter`, sees it wait on `lock` (a lock `holder` has), commits
        `holder`, and returns what `waiter` then gives (or raises)."""
        task = asyncio.ensure_future(waiter)
        try:
            event = await self.waiting(waiter_conn)
        except BaseException:
            task.cancel()
            raise
        assert event == lock, f"the second waits on {event}, not on {lock}"
        await holder.execute("COMMIT")
        return await task


@pytest.fixture
async def k(races_dsn: str) -> AsyncIterator[Races]:
    """Fresh tables and four connections; rolled back and closed after the test."""
    conns = [await asyncpg.connect(races_dsn) for _ in range(4)]
    races = Races(*conns)
    await races.admin.execute(
        "TRUNCATE orders, order_items, sagas, parked_sagas, saga_leases, products,"
        " reservations, reservation_items, accounts, payments, authorization_expiry"
        " RESTART IDENTITY CASCADE"
    )
    try:
        yield races
    finally:
        await rollback(*conns)
        for conn in conns:
            await conn.close()


def wrap(conn: asyncpg.Connection) -> pg_sql.Conn:
    return pg_sql.AsyncpgConn(conn)


async def sqlstate_of(call: Awaitable[Any]) -> str | None:
    try:
        await call
    except asyncpg.PostgresError as error:
        return str(error.sqlstate)
    return None


async def attempt(call: Awaitable[T]) -> T | str:
    """What the call returns, or the SQLSTATE it failed with."""
    try:
        return await call
    except asyncpg.PostgresError as error:
        return str(error.sqlstate)


async def outcome_of(call: Awaitable[T]) -> T | str:
    """What the call returns, or the reason it raised (pg_sql raises LookupError(reason))."""
    try:
        return await call
    except LookupError as error:
        return str(error)


async def begin(*conns: asyncpg.Connection) -> None:
    for conn in conns:
        await conn.execute("BEGIN")


async def rollback(*conns: asyncpg.Connection) -> None:
    for conn in conns:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")


async def row_of(conn: asyncpg.Connection, query: str) -> tuple[Any, ...]:
    return tuple(await conn.fetchrow(query) or ())


async def seed_order(k: Races, order_id: str, user: str = "u1", phase: str = "RESERVED") -> None:
    await k.admin.execute(
        "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state, created_at,"
        " updated_at) VALUES ($1, $2, $1, '', 'PENDING', now(), now())",
        order_id,
        user,
    )
    await k.admin.execute(
        "INSERT INTO order_items (order_id, position, sku, quantity) VALUES ($1, 0, 'A', 1)",
        order_id,
    )
    await k.admin.execute(
        "INSERT INTO sagas (order_id, phase, updated_at) VALUES ($1, $2, now())", order_id, phase
    )


async def create_order(conn: asyncpg.Connection, order_id: str, request_id: str, **kw: Any) -> Any:
    return await pg_sql.create_order(
        wrap(conn), order_id, "u1", request_id, [("A", 1)], owner="x", lease_seconds=10, **kw
    )


INSERT_ORDER = (
    "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state, created_at,"
    " updated_at) VALUES ($1, 'u1', $2, '', 'PENDING', now(), now())"
)


@pytest.mark.parametrize("variant", ["straight_port", "create_order", "on_conflict_alone"])
async def test_duplicate_request_id(k: Races, variant: str) -> None:
    """Two CreateOrders with one request id at once. The straight port (SELECT, then a
    plain INSERT): the loser waits for the winner, then raises unique_violation (23505),
    and its transaction is lost: it must answer the winner's order from a new
    transaction. pg_sql.create_order (the per-user lock, then ON CONFLICT) answers the
    winner's order in the same transaction, with no error; so does ON CONFLICT DO
    NOTHING alone."""
    await begin(k.a, k.b)
    if variant == "straight_port":
        for conn in (k.a, k.b):
            seen = await conn.fetchval("SELECT count(*) FROM orders WHERE request_id = 'r1'")
            assert seen == 0, "each sees no order for the request id"
        await k.a.execute(INSERT_ORDER, "order-a", "r1")
        state = await k.blocked_then(
            k.a, sqlstate_of(k.b.execute(INSERT_ORDER, "order-b", "r1")), k.b
        )
        assert state == "23505", "the loser's INSERT raises unique_violation"
        assert await sqlstate_of(k.b.execute("SELECT 1")) == "25P02", (
            "the loser's transaction is aborted: it cannot even read the winner's order"
        )
        await rollback(k.b)
    elif variant == "create_order":
        assert await create_order(k.a, "order-a", "r1") == ("order-a", True)
        answer = await k.blocked_then(k.a, create_order(k.b, "order-b", "r1"), k.b, lock="advisory")
        assert answer == ("order-a", False), "the second answers order-a, not created"
        await k.b.execute("COMMIT")
    else:
        conflict = " ON CONFLICT (user_id, request_id) DO NOTHING"
        await k.a.execute(INSERT_ORDER + conflict, "order-a", "r1")
        status = await k.blocked_then(
            k.a, k.b.execute(INSERT_ORDER + conflict, "order-b", "r1"), k.b
        )
        assert status == "INSERT 0 0", "the loser's INSERT waits, then inserts nothing"
    # The loser's next statement (a new snapshot, or a new transaction) sees the winner.
    found = await k.b.fetch("SELECT order_id FROM orders WHERE request_id = 'r1'")
    assert [r["order_id"] for r in found] == ["order-a"]
    await rollback(k.b)


@pytest.mark.parametrize("variant", ["listed_order", "sku_order"])
async def test_reservation_deadlock(k: Races, variant: str) -> None:
    """Two orders reserving [A, B, C] and [C, A] at once, the first between its A and its
    B when the second starts. Each locking its SKUs in the order it lists them, they
    deadlock (the first holds A and wants C, the second holds C and wants A): PostgreSQL
    aborts one with 40P01 after deadlock_timeout. Locking in SKU order (pg_sql.reserve),
    the second waits for A instead, holding nothing, and both succeed."""
    await k.admin.execute(
        "INSERT INTO products (sku, name, price_minor, currency, available)"
        " VALUES ('A', 'A', 100, 'USD', 10), ('B', 'B', 100, 'USD', 10),"
        " ('C', 'C', 100, 'USD', 10)"
    )
    in_sku_order = variant == "sku_order"
    # A third session holds B, so that the first reservation stops between A and B.
    await begin(k.holder)
    await k.holder.execute("SELECT 1 FROM products WHERE sku = 'B' FOR UPDATE")
    await begin(k.a, k.b)
    first = asyncio.ensure_future(
        attempt(
            pg_sql.reserve(
                wrap(k.a),
                "o1",
                "u1",
                [("A", 1), ("B", 1), ("C", 1)],
                hold_seconds=60,
                sort_skus=in_sku_order,
            )
        )
    )
    assert await k.waiting(k.a) == "transactionid", "the first holds A and waits for B"
    second = asyncio.ensure_future(
        attempt(
            pg_sql.reserve(
                wrap(k.b),
                "o2",
                "u2",
                [("C", 1), ("A", 1)],
                hold_seconds=60,
                sort_skus=in_sku_order,
            )
        )
    )
    assert await k.waiting(k.b) == "transactionid", "the second waits for A"
    await k.holder.execute("COMMIT")
    if not in_sku_order:
        outcomes = await asyncio.gather(first, second)
        assert sorted(isinstance(o, list) for o in outcomes) == [False, True]
        assert "40P01" in outcomes, f"one is aborted with deadlock_detected: {outcomes}"
        return
    assert isinstance(await first, list), "the first reservation holds"
    await k.a.execute("COMMIT")
    assert isinstance(await second, list), "the second reservation holds"
    await k.b.execute("COMMIT")
    stock = await k.admin.fetch("SELECT sku, available, held FROM products ORDER BY sku")
    assert [tuple(r) for r in stock] == [("A", 8, 2), ("B", 9, 1), ("C", 8, 2)], (
        "and the counts add up"
    )


@pytest.mark.parametrize("resource", ["stock", "money"])
async def test_last_unit(k: Races, resource: str) -> None:
    """The conditional UPDATE (`available >= n`) is safe under READ COMMITTED as it is:
    the second waits for the first's row lock, then re-checks its WHERE on the row the
    first committed (EvalPlanQual), so two reservations of the last unit cannot both
    win; likewise two authorizations against money that covers one."""
    await begin(k.a, k.b)
    if resource == "stock":
        await k.admin.execute(
            "INSERT INTO products (sku, name, price_minor, currency, available)"
            " VALUES ('A', 'A', 100, 'USD', 1)"
        )
        first = await pg_sql.reserve(wrap(k.a), "o1", "u1", [("A", 1)], hold_seconds=60)
        second = await k.blocked_then(
            k.a,
            outcome_of(pg_sql.reserve(wrap(k.b), "o2", "u2", [("A", 1)], hold_seconds=60)),
            k.b,
        )
        await rollback(k.b)
        assert isinstance(first, list), "the first holds the last unit"
        assert second == "OUT_OF_STOCK", "the second is refused"
        available_held = await row_of(k.admin, "SELECT available, held FROM products")
        assert available_held == (0, 1)
        return
    await k.admin.execute(
        "INSERT INTO accounts (user_id, currency, available) VALUES ('u1', 'USD', 100)"
    )
    a = await pg_sql.authorize(wrap(k.a), "o1", "u1", 100, 60)
    b = await k.blocked_then(k.a, pg_sql.authorize(wrap(k.b), "o2", "u1", 100, 60), k.b)
    await k.b.execute("COMMIT")
    assert (a, b) == ("AUTHORIZED", "DECLINED"), "one authorization of the only 100"
    assert await row_of(k.admin, "SELECT available, held FROM accounts") == (0, 100)


@pytest.mark.parametrize("variant", ["straight_port", "conditional"])
async def test_double_move(k: Races, variant: str) -> None:
    """A state change read and then written (the SQLite store's `found.state is
    AUTHORIZED` then `_move`) lets a capture and a void of the same payment both move
    its money under READ COMMITTED: the captured and the returned amount both appear.
    As one conditional UPDATE on the payment's row (`WHERE state = 'AUTHORIZED'`,
    pg_sql.capture and void_payment), the second waits, re-checks, and moves nothing."""
    # Two authorizations of 100, so held cannot go negative and hide the double move.
    await k.admin.execute(
        "INSERT INTO accounts (user_id, currency, available, held) VALUES ('u1', 'USD', 0, 200)"
    )
    await k.admin.execute(
        "INSERT INTO payments VALUES ('o1', 'u1', 100, 'USD', 'AUTHORIZED', now(), now()),"
        " ('o2', 'u1', 100, 'USD', 'AUTHORIZED', now(), now())"
    )
    money = "SELECT available, held, captured FROM accounts"
    await begin(k.a, k.b)
    if variant == "straight_port":
        for conn in (k.a, k.b):
            state = await conn.fetchval("SELECT state FROM payments WHERE order_id = 'o1'")
            assert state == "AUTHORIZED", "each reads AUTHORIZED"
        await k.a.execute("UPDATE accounts SET held = held - 100, captured = captured + 100")
        await k.a.execute("UPDATE payments SET state = 'CAPTURED' WHERE order_id = 'o1'")
        await k.blocked_then(
            k.a,
            k.b.execute("UPDATE accounts SET held = held - 100, available = available + 100"),
            k.b,
        )
        await k.b.execute("UPDATE payments SET state = 'VOIDED' WHERE order_id = 'o1'")
        await k.b.execute("COMMIT")
        # available, held, captured: o1's 100 both captured and returned, o2's hold gone.
        assert await row_of(k.admin, money) == (100, 0, 100), "both moved o1's 100"
        return
    captured = await pg_sql.capture(wrap(k.a), "o1", "u1")
    voided = await k.blocked_then(k.a, pg_sql.void_payment(wrap(k.b), "o1", "u1"), k.b)
    await k.b.execute("COMMIT")
    assert (captured, voided) == (True, "CAPTURED"), "the capture won, the void sees CAPTURED"
    assert await row_of(k.admin, money) == (0, 100, 100), "o1's 100 moved once"


async def test_commit_vs_release(k: Races) -> None:
    """The same on inventory: a CommitReservation (the saga past its pivot, on one
    instance) and a ReleaseReservation of the same order (a compensation by the instance
    that adopted it) at once. pg_sql's conditional state change lets one of them move
    the stock; the other sees the state the first left."""
    await k.admin.execute(
        "INSERT INTO products (sku, name, price_minor, currency, available, held)"
        " VALUES ('A', 'A', 100, 'USD', 0, 2)"
    )
    await k.admin.execute(
        "INSERT INTO reservations VALUES ('o1', 'u1', 'HELD', 'Ax2', now() + interval '1 min')"
    )
    await k.admin.execute("INSERT INTO reservation_items VALUES ('o1', 'A', 2, 100, 'USD')")
    await begin(k.a, k.b)
    committed = await pg_sql.commit_reservation(wrap(k.a), "o1", "u1")
    released = await k.blocked_then(k.a, pg_sql.release_reservation(wrap(k.b), "o1", "u1"), k.b)
    await k.b.execute("COMMIT")
    assert (committed, released) == (True, "COMMITTED"), "the commit won; the release saw it"
    stock = await row_of(k.admin, "SELECT available, held, sold FROM products")
    assert stock == (0, 0, 2), "the 2 units moved once, to sold"


async def test_sweeper_vs_commit(k: Races) -> None:
    """The expiry sweep and a commit of the same hold: the sweep's SKIP LOCKED passes the
    hold the commit has locked instead of waiting for it, and the sweep's conditional
    state change means the stock moves once whoever is first."""
    await k.admin.execute(
        "INSERT INTO products (sku, name, price_minor, currency, available, held)"
        " VALUES ('A', 'A', 100, 'USD', 0, 1)"
    )
    await k.admin.execute(
        "INSERT INTO reservations VALUES ('o1', 'u1', 'HELD', '', now() - interval '1 s')"
    )
    await k.admin.execute("INSERT INTO reservation_items VALUES ('o1', 'A', 1, 100, 'USD')")
    await begin(k.a, k.b)
    # The commit's conditional UPDATE first (its own sweep would expire the hold).
    moved = await k.a.execute(
        "UPDATE reservations SET state = 'COMMITTED' WHERE order_id = 'o1' AND state = 'HELD'"
    )
    assert moved == "UPDATE 1"
    # A sweep that waited on the commit's row lock would fail (55P03) instead of hanging
    # until the commit: the commit is only sent once the sweep has answered.
    await k.b.execute("SET LOCAL lock_timeout = '100ms'")
    swept = await pg_sql.expire_due_holds(wrap(k.b))
    assert swept == 0, "the sweep skipped the locked hold, without waiting for it"
    await k.a.execute("UPDATE products SET held = held - 1, sold = sold + 1 WHERE sku = 'A'")
    await k.a.execute("COMMIT")
    await k.b.execute("COMMIT")
    assert await pg_sql.expire_due_holds(wrap(k.b)) == 0, "a later sweep finds it committed"
    stock = await row_of(k.admin, "SELECT available, held, sold FROM products")
    assert stock == (0, 0, 1), "sold once"


@pytest.mark.parametrize("variant", ["release_first", "reserve_first", "straight_port"])
async def test_tombstone(k: Races, variant: str) -> None:
    """A release for an order with no hold writes a tombstone; a reserve of that order at
    the same instant claims the same key. Whichever inserts first, the other waits on the
    key and finds the first's row: a release first leaves the late reserve holding
    nothing; a reserve first is released. The straight port (read, then plain INSERT)
    makes the loser fail with unique_violation instead."""
    await k.admin.execute(
        "INSERT INTO products (sku, name, price_minor, currency, available)"
        " VALUES ('A', 'A', 100, 'USD', 5)"
    )
    stock = "SELECT available, held FROM products"
    await begin(k.a, k.b)
    if variant == "release_first":
        released = await pg_sql.release_reservation(wrap(k.a), "o1", "u1")
        reserved = await k.blocked_then(
            k.a, pg_sql.reserve(wrap(k.b), "o1", "u1", [("A", 1)], hold_seconds=60), k.b
        )
        await k.b.execute("COMMIT")
        assert (released, reserved) == ("TOMBSTONE", "EXISTING"), "the late reserve holds nothing"
        assert await row_of(k.admin, stock) == (5, 0)
    elif variant == "reserve_first":
        reserved = await pg_sql.reserve(wrap(k.a), "o1", "u1", [("A", 1)], hold_seconds=60)
        released = await k.blocked_then(k.a, pg_sql.release_reservation(wrap(k.b), "o1", "u1"), k.b)
        await k.b.execute("COMMIT")
        assert isinstance(reserved, list)
        assert released == "RELEASED", "the release gives the hold back"
        assert await row_of(k.admin, stock) == (5, 0)
    else:
        for conn in (k.a, k.b):
            assert await conn.fetchval("SELECT count(*) FROM reservations") == 0, "each sees none"
        await k.a.execute("INSERT INTO reservations VALUES ('o1', 'u1', 'RELEASED', '', now())")
        state = await k.blocked_then(
            k.a,
            sqlstate_of(
                k.b.execute("INSERT INTO reservations VALUES ('o1', 'u1', 'HELD', 'Ax1', now())")
            ),
            k.b,
        )
        assert state == "23505", "the loser raises unique_violation: retry, or ON CONFLICT"


@pytest.mark.parametrize("variant", ["straight_port", "conditional_upsert"])
async def test_lease_acquire(k: Races, variant: str) -> None:
    """Two instances adopt one expired saga at once. The straight port (read the lease,
    see it expired, UPDATE epoch = epoch + 1) gives both a lease (epochs 2 and 3: two
    drivers until the first's next fenced write). One conditional upsert whose WHERE is
    on the lease row (pg_sql.acquire_lease) gives it to one; the other re-checks the
    committed row and gets None."""
    await seed_order(k, "o1")
    await k.admin.execute(
        "INSERT INTO saga_leases VALUES ('o1', 'dead', 1, clock_timestamp() - interval '1 s')"
    )
    await begin(k.a, k.b)
    if variant == "straight_port":
        for conn in (k.a, k.b):
            expired = await conn.fetchval(
                "SELECT expires_at <= clock_timestamp() FROM saga_leases WHERE order_id = 'o1'"
            )
            assert expired, "each reads the lease as expired"
        take = (
            "UPDATE saga_leases SET owner = $1, epoch = epoch + 1, expires_at ="
            " clock_timestamp() + interval '10 s' WHERE order_id = 'o1' RETURNING epoch"
        )
        a_epoch = await k.a.fetchval(take, "a")
        b_epoch = await k.blocked_then(k.a, k.b.fetchval(take, "b"), k.b)
        await k.b.execute("COMMIT")
        assert (a_epoch, b_epoch) == (2, 3), "both think they drive it"
        return
    a_epoch = await pg_sql.acquire_lease(wrap(k.a), "o1", "a", 10)
    b_epoch = await k.blocked_then(k.a, pg_sql.acquire_lease(wrap(k.b), "o1", "b", 10), k.b)
    await k.b.execute("COMMIT")
    assert (a_epoch, b_epoch) == (2, None), "one drives it"
    assert await row_of(k.admin, "SELECT owner, epoch FROM saga_leases") == ("a", 2)


@pytest.mark.parametrize("variant", ["plain_select", "for_share"])
async def test_fence(k: Races, variant: str) -> None:
    """The fence (the lease is still mine) read with a plain SELECT does not hold: between
    it and COMMIT another instance may take the lease and commit, and the old owner's
    write lands after the new owner's epoch began. `FOR SHARE` on the lease row
    (pg_sql.fence) makes the acquire wait for the fenced write to commit."""
    await seed_order(k, "o1")
    # a's lease, just expired.
    await k.admin.execute(
        "INSERT INTO saga_leases VALUES ('o1', 'a', 1, clock_timestamp() - interval '1 s')"
    )
    pivot = "UPDATE sagas SET phase = 'COMMITTING' WHERE order_id = 'o1' AND phase = 'RESERVED'"
    await begin(k.a)
    if variant == "plain_select":
        held = await k.a.fetchval(
            "SELECT 1 FROM saga_leases WHERE order_id = 'o1' AND owner = 'a' AND epoch = 1"
        )
        assert held == 1, "a's fence passes"
        b_epoch = await pg_sql.acquire_lease(wrap(k.b), "o1", "b", 10)  # autocommit
        assert b_epoch == 2, "b takes the lease and commits without waiting"
        await k.a.execute(pivot)
        await k.a.execute("COMMIT")
        phase = await k.admin.fetchval("SELECT phase FROM sagas")
        assert phase == "COMMITTING", "a's write under epoch 1 landed after epoch 2 began"
        return
    assert await pg_sql.fence(wrap(k.a), "o1", "a", 1), "a's fence passes"
    await k.a.execute(pivot)
    b_epoch = await k.blocked_then(k.a, pg_sql.acquire_lease(wrap(k.b), "o1", "b", 10), k.b)
    assert b_epoch == 2, "b's acquire waited for a's write, then took epoch 2"


@pytest.mark.parametrize("first", ["pivot", "cancel"])
async def test_cancel_vs_pivot(k: Races, first: str) -> None:
    """A CancelOrder and the saga's move to the pivot at the same instant: both are one
    conditional UPDATE of the saga row, so exactly one takes effect whichever is first."""
    await seed_order(k, "o1")
    await k.admin.execute(
        "INSERT INTO saga_leases VALUES ('o1', 'a', 1, clock_timestamp() + interval '10 s')"
    )

    def pivot(c: asyncpg.Connection) -> Awaitable[bool]:
        return pg_sql.advance(wrap(c), "o1", "a", 1)

    def cancel(c: asyncpg.Connection) -> Awaitable[bool]:
        return pg_sql.request_cancel(wrap(c), "o1")

    steps: dict[str, Callable[[asyncpg.Connection], Awaitable[bool]]]
    steps = {"pivot": pivot, "cancel": cancel}
    [other] = set(steps) - {first}
    await begin(k.a, k.b)
    won = await steps[first](k.a)
    lost = await k.blocked_then(k.a, steps[other](k.b), k.b)
    await k.b.execute("COMMIT")
    assert (won, lost) == (True, False), f"{first} first: it wins, the other answers no"
    saga = await row_of(k.admin, "SELECT phase, cancel_requested FROM sagas")
    assert saga == (("COMMITTING", False) if first == "pivot" else ("RESERVED", True))


@pytest.mark.parametrize("variant", ["straight_port", "per_user_lock"])
async def test_quota(k: Races, variant: str) -> None:
    """The open-order quota is a count, then an insert: two creates of one user at the
    limit both count limit-1 under READ COMMITTED and both insert (write skew). The
    per-user advisory lock in pg_sql.create_order makes the second count after the
    first commits, and refuse."""
    for n in range(2):
        await k.admin.execute(INSERT_ORDER, f"old-{n}", f"old-{n}")
    pending = "SELECT count(*) FROM orders WHERE state = 'PENDING'"
    await begin(k.a, k.b)
    if variant == "straight_port":  # limit 3
        for conn, order_id in ((k.a, "a"), (k.b, "b")):
            assert await conn.fetchval(pending) == 2, "each counts 2 open orders"
            await conn.execute(INSERT_ORDER, order_id, order_id)
        await k.a.execute("COMMIT")
        await k.b.execute("COMMIT")
        assert await k.admin.fetchval(pending) == 4, "both inserted: 4 open > 3"
        return
    a = await create_order(k.a, "a", "ra", max_open_orders=3)
    b = await k.blocked_then(
        k.a, create_order(k.b, "b", "rb", max_open_orders=3), k.b, lock="advisory"
    )
    await k.b.execute("COMMIT")
    assert (a, b) == (("a", True), ("TOO_MANY_OPEN_ORDERS", False)), "the second is refused"
    assert await k.admin.fetchval(pending) == 3


@pytest.mark.parametrize("variant", ["straight_port", "per_user_lock"])
async def test_keyset_skip(k: Races, variant: str) -> None:
    """ListOrders pages by `seq < cursor`, newest first. A sequence value is taken at
    INSERT, not at COMMIT: an order that took seq 2 and commits after a page already went
    past it (that page held 3 and 1) is never listed by that walk. Under the per-user
    lock (pg_sql.create_order) a user's seqs follow commit order, so every page is a
    prefix and nothing is skipped."""
    page = "SELECT seq FROM orders WHERE user_id = 'u1' AND seq < $1 ORDER BY seq DESC LIMIT 2"
    if variant == "straight_port":
        insert = INSERT_ORDER + " RETURNING seq"
        await k.admin.fetchval(insert, "o1", "o1")  # seq 1, committed
        await begin(k.a)
        late = await k.a.fetchval(insert, "o2", "o2")  # seq 2, not committed yet
        await k.b.fetchval(insert, "o3", "o3")  # seq 3, committed
        first_page = await k.admin.fetch(page, 2**62)
        await k.a.execute("COMMIT")
        rest = await k.admin.fetch(page, first_page[-1]["seq"])
        listed = [r["seq"] for r in first_page] + [r["seq"] for r in rest]
        assert (late, listed) == (2, [3, 1]), "seq 2 committed late and the walk skipped it"
        return

    async def walk() -> list[int]:
        seen: list[int] = []
        cursor = 2**62
        while rows := await k.admin.fetch(page, cursor):
            seen += [r["seq"] for r in rows]
            cursor = rows[-1]["seq"]
        return seen

    await create_order(k.admin, "o1", "o1")
    await begin(k.a, k.b)
    await create_order(k.a, "o2", "o2")
    waiter = asyncio.ensure_future(create_order(k.b, "o3", "o3"))
    assert await k.waiting(k.b) == "advisory"
    assert await walk() == [1], "while o2 is open, o3 waits and a walk sees a prefix"
    await k.a.execute("COMMIT")
    await waiter
    await k.b.execute("COMMIT")
    assert await walk() == [3, 2, 1], "then every order, in commit order"


async def test_now_is_transaction_start(k: Races) -> None:
    """now() is the transaction's start: in a transaction that waited (here 0.3 s, in the
    server), a lease that expired meanwhile still looks live by now(), and a lease
    written as now() + L is 0.3 s short. clock_timestamp() is the time of the statement."""
    await seed_order(k, "o1")
    await k.admin.execute(
        "INSERT INTO saga_leases VALUES ('o1', 'dead', 1, clock_timestamp() + interval '0.15 s')"
    )
    await begin(k.a)
    await k.a.execute("SELECT pg_sleep(0.3)")  # a transaction that waited, e.g. on a lock
    row = await k.a.fetchrow(
        "SELECT clock_timestamp() - now() AS lag, expires_at <= now() AS by_now,"
        " expires_at <= clock_timestamp() AS by_clock FROM saga_leases"
    )
    await k.a.execute("COMMIT")
    assert row is not None
    assert row["lag"].total_seconds() >= 0.29, "clock_timestamp() - now() is the wait"
    assert (row["by_now"], row["by_clock"]) == (False, True), (
        "the expired lease is live by now(), expired by clock_timestamp()"
    )


async def test_serializable_hot_row(k: Races) -> None:
    """Why not SERIALIZABLE (or REPEATABLE READ): there a second reservation of the same
    SKU does not wait and re-check, it fails with 40001 once the first commits and must
    be retried whole; on a hot product row (make bench's one SKU) every concurrent
    reservation but one would abort. READ COMMITTED's re-check gives the same safety."""
    await k.admin.execute(
        "INSERT INTO products (sku, name, price_minor, currency, available)"
        " VALUES ('A', 'A', 100, 'USD', 10)"
    )
    assert await k.a.fetchval("SHOW default_transaction_isolation") == "read committed"
    take = "UPDATE products SET available = available - 1 WHERE sku = 'A' AND available >= 1"
    for conn in (k.a, k.b):
        await conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        await conn.fetchval("SELECT 1")  # the snapshot is taken at the first statement
    await k.a.execute(take)
    state = await k.blocked_then(k.a, sqlstate_of(k.b.execute(take)), k.b)
    assert state == "40001", "the second fails with serialization_failure"
