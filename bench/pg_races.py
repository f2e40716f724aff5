"""`make pg-races`: each race of docs/postgres-concurrency.md, run on a real PostgreSQL 15
with two real connections under READ COMMITTED (the default), first as a straight port
of the SQLite store would run it, then as bench/pg_sql.py writes it.

Each race is scheduled, not left to chance: one connection takes its step and holds its
transaction open; the other's statement is started and observed *waiting on a lock* (in
pg_stat_activity, polled, never slept for); then the first commits and the second's
outcome is read. A race prints what each side saw and the verdict. The process exits 1
if any claim does not hold: these are the tests the store backend inherits.

    python -m bench.pg_races [-k NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import uvloop

from bench import pg_sql
from bench.pg_server import Server, running

LOCK_WAIT_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")


class ClaimFailed(AssertionError):
    pass


def claim(holds: bool, what: str) -> None:
    print(f"    {'ok ' if holds else 'NO '} {what}")
    if not holds:
        raise ClaimFailed(what)


@dataclass
class Bench:
    """Two sessions (a, b) and an observer (admin) on one database with every table."""

    server: Server
    a: asyncpg.Connection
    b: asyncpg.Connection
    admin: asyncpg.Connection

    async def reset(self) -> None:
        await self.admin.execute(
            "TRUNCATE orders, order_items, sagas, parked_sagas, saga_leases, products,"
            " reservations, reservation_items, accounts, payments, authorization_expiry"
            " RESTART IDENTITY CASCADE"
        )

    async def waiting(self, conn: asyncpg.Connection) -> str:
        """Returns once `conn`'s backend waits on a lock; what it waits for."""
        pid = conn.get_server_pid()
        deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            row = await self.admin.fetchrow(
                "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = $1", pid
            )
            if row is not None and row["wait_event_type"] == "Lock":
                return str(row["wait_event"])
            await asyncio.sleep(0.005)
        raise ClaimFailed(f"backend {pid} never waited on a lock")

    async def blocked_then(
        self, holder: asyncpg.Connection, waiter: Awaitable[T], waiter_conn: asyncpg.Connection
    ) -> T:
        """Starts `waiter`, sees it wait on a lock `holder` has, commits `holder`, and
        returns what `waiter` then gives (or raises)."""
        task = asyncio.ensure_future(waiter)
        event = await self.waiting(waiter_conn)
        print(f"    .. the second waits on a lock ({event}) until the first commits")
        await holder.execute("COMMIT")
        return await task


def wrap(conn: asyncpg.Connection) -> pg_sql.Conn:
    return pg_sql.AsyncpgConn(conn)


async def sqlstate_of(call: Awaitable[Any]) -> str | None:
    try:
        await call
    except asyncpg.PostgresError as error:
        return str(error.sqlstate)
    return None


async def begin(*conns: asyncpg.Connection) -> None:
    for conn in conns:
        await conn.execute("BEGIN")


async def rollback(*conns: asyncpg.Connection) -> None:
    for conn in conns:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")


async def seed_order(k: Bench, order_id: str, user: str = "u1", phase: str = "RESERVED") -> None:
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


# The races. Each docstring is the claim; docs/postgres-concurrency.md cites them by name.


async def duplicate_request_id(k: Bench) -> None:
    """Two CreateOrders with one request id at once: a plain INSERT's loser waits for the
    winner, then raises unique_violation (23505), and its transaction is lost: it must
    answer the winner's order from a new transaction. ON CONFLICT DO NOTHING (or the
    per-user lock) lets the loser answer it in the same transaction, with no error."""
    insert = (
        "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state, created_at,"
        " updated_at) VALUES ($1, 'u1', 'r1', '', 'PENDING', now(), now())"
    )
    print("  port of the SQLite store (SELECT, then a plain INSERT):")
    await begin(k.a, k.b)
    for conn in (k.a, k.b):
        claim(
            await conn.fetchval("SELECT count(*) FROM orders WHERE request_id = 'r1'") == 0,
            "each sees no order for the request id",
        )
    await k.a.execute(insert, "order-a")
    state = await k.blocked_then(k.a, sqlstate_of(k.b.execute(insert, "order-b")), k.b)
    claim(state == "23505", f"the loser's INSERT raised unique_violation ({state})")
    claim(
        await sqlstate_of(k.b.execute("SELECT 1")) == "25P02",
        "the loser's transaction is aborted (25P02): it cannot even read the winner's order",
    )
    await rollback(k.b)
    found = await k.b.fetchval("SELECT order_id FROM orders WHERE request_id = 'r1'")
    claim(found == "order-a", "a new transaction answers the winner's order")

    print("  as pg_sql.create_order writes it (per-user lock, then ON CONFLICT):")
    await k.reset()
    await begin(k.a, k.b)
    made = await pg_sql.create_order(
        wrap(k.a), "order-a", "u1", "r1", [("A", 1)], owner="a", lease_seconds=10
    )
    claim(made == ("order-a", True), "the first creates order-a")
    answer = await k.blocked_then(
        k.a,
        pg_sql.create_order(
            wrap(k.b), "order-b", "u1", "r1", [("A", 1)], owner="b", lease_seconds=10
        ),
        k.b,
    )
    claim(answer == ("order-a", False), f"the second answers order-a, not created: {answer}")
    await k.b.execute("COMMIT")

    print("  ON CONFLICT DO NOTHING alone (no lock):")
    await k.reset()
    await begin(k.a, k.b)
    conflict = " ON CONFLICT (user_id, request_id) DO NOTHING"
    await k.a.execute(insert + conflict, "order-a")
    status = await k.blocked_then(k.a, k.b.execute(insert + conflict, "order-b"), k.b)
    claim(status == "INSERT 0 0", f"the loser's INSERT waits, then inserts nothing ({status})")
    found = await k.b.fetchval("SELECT order_id FROM orders WHERE request_id = 'r1'")
    claim(found == "order-a", "and its next statement (a new snapshot) sees order-a")
    await k.b.execute("COMMIT")


async def reservation_deadlock(k: Bench) -> None:
    """Two orders reserving [A, B] and [B, A] at once, each locking its SKUs in the order
    it lists them, deadlock: PostgreSQL aborts one with 40P01 after deadlock_timeout (1 s);
    locking in SKU order, the second waits for the first instead, and both succeed."""
    take = "UPDATE products SET available = available - 1, held = held + 1 WHERE sku = $1"
    await k.admin.execute(
        "INSERT INTO products (sku, name, price_minor, currency, available)"
        " VALUES ('A', 'A', 100, 'USD', 10), ('B', 'B', 100, 'USD', 10)"
    )
    print("  each in the order it lists its SKUs:")
    await begin(k.a, k.b)
    await k.a.execute(take, "A")
    await k.b.execute(take, "B")
    a_waits = asyncio.ensure_future(sqlstate_of(k.a.execute(take, "B")))
    await k.waiting(k.a)
    started = time.monotonic()
    b_state = await sqlstate_of(k.b.execute(take, "A"))
    a_state = await a_waits
    print(f"    .. after {time.monotonic() - started:.2f} s: a {a_state}, b {b_state}")
    claim("40P01" in (a_state, b_state), "one of them is aborted with deadlock_detected")
    await rollback(k.a, k.b)

    print("  as pg_sql.reserve does it (SKUs in sorted order):")
    await k.admin.execute("UPDATE products SET available = 10, held = 0")
    await begin(k.a, k.b)
    first = await pg_sql.reserve(wrap(k.a), "o1", "u1", [("A", 1), ("B", 1)], hold_seconds=60)
    second = await k.blocked_then(
        k.a,
        pg_sql.reserve(wrap(k.b), "o2", "u2", [("B", 1), ("A", 1)], hold_seconds=60),
        k.b,
    )
    await k.b.execute("COMMIT")
    claim(isinstance(first, list) and isinstance(second, list), "both reservations hold")
    held = await k.admin.fetch("SELECT sku, available, held FROM products ORDER BY sku")
    claim(
        [tuple(r) for r in held] == [("A", 8, 2), ("B", 8, 2)],
        f"and the counts add up: {[tuple(r) for r in held]}",
    )


async def last_unit(k: Bench) -> None:
    """The conditional UPDATE (`available >= n`) is safe under READ COMMITTED as it is:
    the second waits for the first's row lock, then re-checks its WHERE on the row the
    first committed (EvalPlanQual), so two reservations of the last unit cannot both win;
    likewise two authorizations against money that covers one."""
    await k.admin.execute(
        "INSERT INTO products (sku, name, price_minor, currency, available)"
        " VALUES ('A', 'A', 100, 'USD', 1)"
    )
    await begin(k.a, k.b)
    first = await pg_sql.reserve(wrap(k.a), "o1", "u1", [("A", 1)], hold_seconds=60)
    second = await k.blocked_then(
        k.a,
        sqlstate_or_error(pg_sql.reserve(wrap(k.b), "o2", "u2", [("A", 1)], hold_seconds=60)),
        k.b,
    )
    await rollback(k.b)
    claim(isinstance(first, list), "the first holds the last unit")
    claim(second == "OUT_OF_STOCK", f"the second is refused: {second}")
    row = await k.admin.fetchrow("SELECT available, held FROM products WHERE sku = 'A'")
    claim(tuple(row or ()) == (0, 1), f"available 0, held 1: {tuple(row or ())}")

    await k.admin.execute(
        "INSERT INTO accounts (user_id, currency, available) VALUES ('u1', 'USD', 100)"
    )
    await begin(k.a, k.b)
    a = await pg_sql.authorize(wrap(k.a), "o1", "u1", 100, 60)
    b = await k.blocked_then(k.a, pg_sql.authorize(wrap(k.b), "o2", "u1", 100, 60), k.b)
    await k.b.execute("COMMIT")
    claim((a, b) == ("AUTHORIZED", "DECLINED"), f"one authorization of the only 100: {a}, {b}")


async def sqlstate_or_error(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except LookupError as error:
        return str(error)
    except asyncpg.PostgresError as error:
        return str(error.sqlstate)


async def double_move(k: Bench) -> None:
    """A state change read and then written (the SQLite store's `found.state is
    AUTHORIZED` then `_move`) lets a capture and a void of the same payment both move
    its money under READ COMMITTED: the captured and the returned amount both appear.
    As one conditional UPDATE on the payment's row (`WHERE state = 'AUTHORIZED'`), the
    second waits, re-checks, and moves nothing."""

    async def setup() -> None:
        await k.reset()
        # Two authorizations of 100, so held cannot go negative and hide the double move.
        await k.admin.execute(
            "INSERT INTO accounts (user_id, currency, available, held) VALUES ('u1', 'USD', 0, 200)"
        )
        await k.admin.execute(
            "INSERT INTO payments VALUES ('o1', 'u1', 100, 'USD', 'AUTHORIZED', now(), now()),"
            " ('o2', 'u1', 100, 'USD', 'AUTHORIZED', now(), now())"
        )

    print("  port of the SQLite store (read the state, then move):")
    await setup()
    await begin(k.a, k.b)
    for conn in (k.a, k.b):
        state = await conn.fetchval("SELECT state FROM payments WHERE order_id = 'o1'")
        claim(state == "AUTHORIZED", "each reads AUTHORIZED")
    await k.a.execute("UPDATE accounts SET held = held - 100, captured = captured + 100")
    await k.a.execute("UPDATE payments SET state = 'CAPTURED' WHERE order_id = 'o1'")
    await k.blocked_then(
        k.a, k.b.execute("UPDATE accounts SET held = held - 100, available = available + 100"), k.b
    )
    await k.b.execute("UPDATE payments SET state = 'VOIDED' WHERE order_id = 'o1'")
    await k.b.execute("COMMIT")
    row = await k.admin.fetchrow("SELECT available, held, captured FROM accounts")
    claim(
        tuple(row or ()) == (100, 0, 100),
        f"both moved o1's 100: available, held, captured = {tuple(row or ())} (o2's hold is gone)",
    )

    print("  as pg_sql.capture and void_payment do it:")
    await setup()
    await begin(k.a, k.b)
    captured = await pg_sql.capture(wrap(k.a), "o1", "u1")
    voided = await k.blocked_then(k.a, pg_sql.void_payment(wrap(k.b), "o1", "u1"), k.b)
    await k.b.execute("COMMIT")
    row = await k.admin.fetchrow("SELECT available, held, captured FROM accounts")
    claim(captured is True and voided == "CAPTURED", f"capture won, the void sees {voided}")
    claim(tuple(row or ()) == (0, 100, 100), f"o1 moved once: {tuple(row or ())}")


async def sweeper_vs_commit(k: Bench) -> None:
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
    started = time.monotonic()
    swept = await pg_sql.expire_due_holds(wrap(k.b))
    waited = time.monotonic() - started
    claim(moved == "UPDATE 1" and swept == 0, f"the sweep skipped the locked hold ({swept})")
    claim(waited < 0.5, f"without waiting for it ({waited * 1000:.0f} ms)")
    await k.a.execute("UPDATE products SET held = held - 1, sold = sold + 1 WHERE sku = 'A'")
    await k.a.execute("COMMIT")
    await k.b.execute("COMMIT")
    swept = await pg_sql.expire_due_holds(wrap(k.b))
    row = await k.admin.fetchrow("SELECT available, held, sold FROM products")
    claim(swept == 0 and tuple(row or ()) == (0, 0, 1), f"sold once: {tuple(row or ())}")


async def tombstone(k: Bench) -> None:
    """A release for an order with no hold writes a tombstone; a reserve of that order at
    the same instant claims the same key. Whichever inserts first, the other waits on the
    key and finds the first's row: a release first leaves the late reserve holding
    nothing; a reserve first is released. The straight port (read, then plain INSERT)
    makes the loser fail with unique_violation instead."""
    await k.admin.execute(
        "INSERT INTO products (sku, name, price_minor, currency, available)"
        " VALUES ('A', 'A', 100, 'USD', 5)"
    )
    print("  release first, reserve at the same instant:")
    await begin(k.a, k.b)
    released = await pg_sql.release_reservation(wrap(k.a), "o1", "u1")
    reserved = await k.blocked_then(
        k.a, pg_sql.reserve(wrap(k.b), "o1", "u1", [("A", 1)], hold_seconds=60), k.b
    )
    await k.b.execute("COMMIT")
    available = await k.admin.fetchval("SELECT available FROM products")
    claim(
        (released, reserved, available) == ("TOMBSTONE", "EXISTING", 5),
        f"the late reserve holds nothing: {released}, {reserved}, available {available}",
    )

    print("  reserve first, release at the same instant:")
    await k.admin.execute("TRUNCATE reservations, reservation_items")
    await begin(k.a, k.b)
    reserved = await pg_sql.reserve(wrap(k.a), "o1", "u1", [("A", 1)], hold_seconds=60)
    released = await k.blocked_then(k.a, pg_sql.release_reservation(wrap(k.b), "o1", "u1"), k.b)
    await k.b.execute("COMMIT")
    row = await k.admin.fetchrow("SELECT available, held FROM products")
    claim(
        released == "RELEASED" and tuple(row or ()) == (5, 0),
        f"the release gives the hold back: {released}, {tuple(row or ())}",
    )

    print("  port of the SQLite store (read, then a plain INSERT):")
    await k.admin.execute("TRUNCATE reservations, reservation_items")
    await begin(k.a, k.b)
    for conn in (k.a, k.b):
        claim(await conn.fetchval("SELECT count(*) FROM reservations") == 0, "each sees none")
    await k.a.execute("INSERT INTO reservations VALUES ('o1', 'u1', 'RELEASED', '', now())")
    state = await k.blocked_then(
        k.a,
        sqlstate_of(
            k.b.execute("INSERT INTO reservations VALUES ('o1', 'u1', 'HELD', 'Ax1', now())")
        ),
        k.b,
    )
    await rollback(k.b)
    claim(state == "23505", f"the loser raises unique_violation ({state}): retry, or ON CONFLICT")


async def lease_acquire(k: Bench) -> None:
    """Two instances adopt one expired saga at once. The straight port (read the lease,
    see it expired, UPDATE epoch = epoch + 1) gives both a lease (epochs 2 and 3: two
    drivers until the first's next fenced write). One conditional upsert whose WHERE is
    on the lease row gives it to one; the other re-checks the committed row and gets None."""
    await seed_order(k, "o1")
    await k.admin.execute(
        "INSERT INTO saga_leases VALUES ('o1', 'dead', 1, clock_timestamp() - interval '1 s')"
    )
    print("  port of the SQLite store:")
    await begin(k.a, k.b)
    for conn in (k.a, k.b):
        row = await conn.fetchrow(
            "SELECT owner, epoch, expires_at <= clock_timestamp() AS expired FROM saga_leases"
        )
        claim(row is not None and row["expired"], "each reads the lease as expired")
    take = (
        "UPDATE saga_leases SET owner = $1, epoch = epoch + 1,"
        " expires_at = clock_timestamp() + interval '10 s' WHERE order_id = 'o1' RETURNING epoch"
    )
    a_epoch = await k.a.fetchval(take, "a")
    b_epoch = await k.blocked_then(k.a, k.b.fetchval(take, "b"), k.b)
    await k.b.execute("COMMIT")
    claim((a_epoch, b_epoch) == (2, 3), f"both think they drive it: epochs {a_epoch}, {b_epoch}")

    print("  as pg_sql.acquire_lease does it:")
    await k.admin.execute(
        "UPDATE saga_leases SET owner = 'dead', expires_at = clock_timestamp() - interval '1 s'"
    )
    await begin(k.a, k.b)
    a_epoch = await pg_sql.acquire_lease(wrap(k.a), "o1", "a", 10)
    b_epoch = await k.blocked_then(k.a, pg_sql.acquire_lease(wrap(k.b), "o1", "b", 10), k.b)
    await k.b.execute("COMMIT")
    claim((a_epoch, b_epoch) == (4, None), f"one drives it: {a_epoch}, {b_epoch}")


async def fence(k: Bench) -> None:
    """The fence (the lease is still mine) read with a plain SELECT does not hold: between
    it and COMMIT another instance may take the lease and commit, and the old owner's
    write lands after the new owner's epoch began. `FOR SHARE` on the lease row makes the
    acquire wait for the fenced write to commit."""
    await seed_order(k, "o1")
    expired = "UPDATE saga_leases SET expires_at = clock_timestamp() - interval '1 s'"
    await k.admin.execute("INSERT INTO saga_leases VALUES ('o1', 'a', 1, clock_timestamp())")
    await k.admin.execute(expired)
    print("  fence as a plain SELECT:")
    await begin(k.a)
    held = await k.a.fetchval(
        "SELECT 1 FROM saga_leases WHERE order_id = 'o1' AND owner = 'a' AND epoch = 1"
    )
    claim(held == 1, "a's fence passes (its lease has just expired)")
    b_epoch = await pg_sql.acquire_lease(wrap(k.b), "o1", "b", 10)  # autocommit
    claim(b_epoch == 2, f"b takes the lease and commits (epoch {b_epoch}) without waiting")
    await k.a.execute(
        "UPDATE sagas SET phase = 'COMMITTING' WHERE order_id = 'o1' AND phase = 'RESERVED'"
    )
    await k.a.execute("COMMIT")
    phase = await k.admin.fetchval("SELECT phase FROM sagas")
    claim(phase == "COMMITTING", "a's write under epoch 1 landed after epoch 2 began")

    print("  fence FOR SHARE (pg_sql.fence):")
    await k.admin.execute("UPDATE sagas SET phase = 'RESERVED'")
    await k.admin.execute("UPDATE saga_leases SET owner = 'a', epoch = 1")
    await k.admin.execute(expired)
    await begin(k.a)
    claim(await pg_sql.fence(wrap(k.a), "o1", "a", 1), "a's fence passes")
    await k.a.execute(
        "UPDATE sagas SET phase = 'COMMITTING' WHERE order_id = 'o1' AND phase = 'RESERVED'"
    )
    b_epoch = await k.blocked_then(k.a, pg_sql.acquire_lease(wrap(k.b), "o1", "b", 10), k.b)
    claim(b_epoch == 2, "b's acquire waited for a's write, then took epoch 2")


async def cancel_vs_pivot(k: Bench) -> None:
    """A CancelOrder and the saga's move to the pivot at the same instant: both are one
    conditional UPDATE of the saga row, so exactly one takes effect whichever is first."""
    for first in ("pivot", "cancel"):
        await k.reset()
        await seed_order(k, "o1")
        await k.admin.execute(
            "INSERT INTO saga_leases VALUES ('o1', 'a', 1, clock_timestamp() + interval '10 s')"
        )
        await begin(k.a, k.b)

        def pivot(c: asyncpg.Connection) -> Awaitable[bool]:
            return pg_sql.advance(wrap(c), "o1", "a", 1)

        def cancel(c: asyncpg.Connection) -> Awaitable[bool]:
            return pg_sql.request_cancel(wrap(c), "o1")

        one, other = (pivot, cancel) if first == "pivot" else (cancel, pivot)
        won = await one(k.a)
        lost = await k.blocked_then(k.a, other(k.b), k.b)
        await k.b.execute("COMMIT")
        row = await k.admin.fetchrow("SELECT phase, cancel_requested FROM sagas")
        claim(won and not lost, f"{first} first: it wins, the other answers no: {tuple(row or ())}")


async def quota(k: Bench) -> None:
    """The open-order quota is a count, then an insert: two creates of one user at the
    limit both count limit-1 under READ COMMITTED and both insert (write skew). The
    per-user advisory lock in pg_sql.create_order makes the second count after the first
    commits, and refuse."""
    for n in range(2):
        await k.admin.execute(
            "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state, created_at,"
            " updated_at) VALUES ($1, 'u1', $1, '', 'PENDING', now(), now())",
            f"old-{n}",
        )
    print("  without the lock (count, then insert), limit 3:")
    await begin(k.a, k.b)
    counts = []
    for conn, oid in ((k.a, "a"), (k.b, "b")):
        counts.append(
            await conn.fetchval(
                "SELECT count(*) FROM orders WHERE user_id = 'u1' AND state = 'PENDING'"
            )
        )
        await conn.execute(
            "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state, created_at,"
            " updated_at) VALUES ($1, 'u1', $1, '', 'PENDING', now(), now())",
            oid,
        )
    await k.a.execute("COMMIT")
    await k.b.execute("COMMIT")
    total = await k.admin.fetchval("SELECT count(*) FROM orders WHERE state = 'PENDING'")
    claim(counts == [2, 2] and total == 4, f"both counted 2 and inserted: {total} open > 3")

    print("  pg_sql.create_order (per-user advisory lock):")
    await k.admin.execute("DELETE FROM orders WHERE order_id IN ('a', 'b')")
    await begin(k.a, k.b)
    a = await pg_sql.create_order(
        wrap(k.a), "a", "u1", "ra", [("A", 1)], owner="a", lease_seconds=10, max_open_orders=3
    )
    b = await k.blocked_then(
        k.a,
        pg_sql.create_order(
            wrap(k.b),
            "b",
            "u1",
            "rb",
            [("A", 1)],
            owner="b",
            lease_seconds=10,
            max_open_orders=3,
        ),
        k.b,
    )
    await k.b.execute("COMMIT")
    claim(a == ("a", True) and b == ("TOO_MANY_OPEN_ORDERS", False), f"the second is refused: {b}")


async def keyset_skip(k: Bench) -> None:
    """ListOrders pages by `seq < cursor`, newest first. A sequence value is taken at
    INSERT, not at COMMIT: an order that took seq 2 and commits after a page already went
    past it (that page held 3 and 1) is never listed by that walk. Under the per-user lock
    a user's seqs follow commit order, so every page is a prefix and nothing is skipped."""
    page = "SELECT seq FROM orders WHERE user_id = 'u1' AND seq < $1 ORDER BY seq DESC LIMIT 2"

    async def walk() -> list[int]:
        seen, cursor = [], 2**62
        while rows := await k.admin.fetch(page, cursor):
            seen += [r["seq"] for r in rows]
            cursor = rows[-1]["seq"]
            if len(rows) < 2:
                break
        return seen

    async def create(conn: asyncpg.Connection, oid: str) -> Any:
        return await pg_sql.create_order(
            wrap(conn), oid, "u1", oid, [("A", 1)], owner="x", lease_seconds=10
        )

    print("  plain INSERTs (no lock):")
    insert = (
        "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state, created_at,"
        " updated_at) VALUES ($1, 'u1', $1, '', 'PENDING', now(), now()) RETURNING seq"
    )
    await k.admin.fetchval(insert, "o1")  # seq 1, committed
    await begin(k.a)
    late = await k.a.fetchval(insert, "o2")  # seq 2, not committed yet
    await k.b.fetchval(insert, "o3")  # seq 3, committed
    first_page = await k.admin.fetch(page, 2**62)
    await k.a.execute("COMMIT")
    rest = await k.admin.fetch(page, first_page[-1]["seq"])
    listed = [r["seq"] for r in first_page] + [r["seq"] for r in rest]
    claim(late == 2 and listed == [3, 1], f"seq 2 committed late and the walk listed {listed}")

    print("  pg_sql.create_order (per-user lock):")
    await k.reset()
    await create(k.admin, "o1")
    await begin(k.a, k.b)
    await create(k.a, "o2")
    waiter = asyncio.ensure_future(create(k.b, "o3"))
    await k.waiting(k.b)
    during = await walk()
    claim(during == [1], f"while o2 is open, o3 waits and a walk sees a prefix: {during}")
    await k.a.execute("COMMIT")
    await waiter
    await k.b.execute("COMMIT")
    after = await walk()
    claim(after == [3, 2, 1], f"then every order, in commit order: {after}")


async def now_is_transaction_start(k: Bench) -> None:
    """now() is the transaction's start: in a transaction that waited (here 0.6 s), a
    lease that expired meanwhile still looks live by now(), and a lease written as
    now() + L is 0.6 s short. clock_timestamp() is the time of the statement."""
    await seed_order(k, "o1")
    await k.admin.execute(
        "INSERT INTO saga_leases VALUES ('o1', 'dead', 1, clock_timestamp() + interval '0.3 s')"
    )
    await begin(k.a)
    await k.a.execute("SELECT pg_sleep(0.6)")  # a transaction that waited, e.g. on a lock
    row = await k.a.fetchrow(
        "SELECT clock_timestamp() - now() AS lag, expires_at <= now() AS by_now,"
        " expires_at <= clock_timestamp() AS by_clock FROM saga_leases"
    )
    await k.a.execute("COMMIT")
    assert row is not None
    lag = row["lag"].total_seconds()
    claim(lag >= 0.59, f"clock_timestamp() - now() = {lag:.3f} s inside the transaction")
    claim(
        not row["by_now"] and row["by_clock"],
        "the expired lease is live by now(), expired by clock_timestamp()",
    )


async def commit_vs_release(k: Bench) -> None:
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
    row = await k.admin.fetchrow("SELECT available, held, sold FROM products")
    claim(committed and released == "COMMITTED", f"the commit won; the release saw {released}")
    claim(tuple(row or ()) == (0, 0, 2), f"the 2 units moved once, to sold: {tuple(row or ())}")


async def serializable_hot_row(k: Bench) -> None:
    """Why not SERIALIZABLE (or REPEATABLE READ): there a second reservation of the same
    SKU does not wait and re-check, it fails with 40001 once the first commits and must
    be retried whole; on a hot product row (make bench's one SKU) every concurrent
    reservation but one would abort. READ COMMITTED's re-check gives the same safety."""
    await k.admin.execute(
        "INSERT INTO products (sku, name, price_minor, currency, available)"
        " VALUES ('A', 'A', 100, 'USD', 10)"
    )
    take = "UPDATE products SET available = available - 1 WHERE sku = 'A' AND available >= 1"
    for conn in (k.a, k.b):
        await conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        await conn.fetchval("SELECT 1")  # the snapshot is taken at the first statement
    await k.a.execute(take)
    state = await k.blocked_then(k.a, sqlstate_of(k.b.execute(take)), k.b)
    await rollback(k.b)
    claim(state == "40001", f"the second fails with serialization_failure ({state})")


RACES: dict[str, Callable[[Bench], Awaitable[None]]] = {
    race.__name__: race
    for race in (
        duplicate_request_id,
        reservation_deadlock,
        last_unit,
        double_move,
        commit_vs_release,
        sweeper_vs_commit,
        tombstone,
        lease_acquire,
        fence,
        cancel_vs_pivot,
        quota,
        keyset_skip,
        now_is_transaction_start,
        serializable_hot_row,
    )
}


async def main_async(names: list[str]) -> int:
    failed = []
    with running({"fsync": "on", "synchronous_commit": "on"}) as server:
        admin = await asyncpg.connect(server.dsn())
        await admin.execute('CREATE DATABASE "races"')
        await admin.close()
        dsn = server.dsn("races")
        admin = await asyncpg.connect(dsn)
        for schema in pg_sql.SCHEMAS.values():
            await admin.execute(schema)
        a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        k = Bench(server, a, b, admin)
        isolation = await a.fetchval("SHOW default_transaction_isolation")
        print(f"PostgreSQL {await admin.fetchval('SHOW server_version')}, {isolation}")
        for name in names:
            print(f"{name}: {' '.join((RACES[name].__doc__ or '').split())}")
            await k.reset()
            try:
                await RACES[name](k)
            except ClaimFailed:
                failed.append(name)
            finally:
                await rollback(a, b)
        for conn in (a, b, admin):
            await conn.close()
    print(f"\n{len(names) - len(failed)} of {len(names)} races behave as claimed")
    if failed:
        print("not as claimed: " + ", ".join(failed))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pg_races", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-k", dest="only", help="only the races whose name contains this")
    args = parser.parse_args(argv)
    names = [n for n in RACES if not args.only or args.only in n]
    return uvloop.run(main_async(names))


if __name__ == "__main__":
    sys.exit(main())
