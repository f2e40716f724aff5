"""PostgreSQL-only faults against the real server: a row lock held past the lock or
statement timeout, the connection pool exhausted, the server refusing new connections,
and the server killed (kill -9) and restarted under load.

What a caller must see in each: STORAGE_UNAVAILABLE (a retryable UNAVAILABLE) within the
bound the pool's settings give, never a hang and never INTERNAL; nothing half applied and
nothing doubled; and once the fault is gone, every call works again on the same pool,
without restarting anything. Small timeouts (PoolSettings) keep each test to seconds."""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import psycopg
import pytest
from psycopg import sql

from services.common.errors import ErrorKind, ServiceError
from services.common.postgresql import PoolSettings
from services.inventory.domain import Item, Reservation, ReservationState
from services.inventory.store import InventoryStore
from shopmesh.postgres import Cluster
from tests.helpers import PRODUCTS, record_fault

T = TypeVar("T")

HOLD_SECONDS = 900.0
MARGIN_SECONDS = 1.0
"""What a refusal may take beyond its bound here: the event loop, a busy 2-core machine."""
WAIT_SECONDS = 10.0

_databases = itertools.count(1)


async def eventually(condition: Callable[[], T | None], what: str) -> T:
    """Polls `condition` (on this event loop, so the calls under test go on) until it
    returns something truthy; fails after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_SECONDS}s waiting for {what}")
        await asyncio.sleep(0.02)


async def refusal(call: Awaitable[object]) -> tuple[ServiceError, float]:
    """The storage fault `call` fails with and how long it took; fails the test if it
    succeeds or fails with anything else (a driver's exception is an INTERNAL)."""
    began = time.monotonic()
    try:
        await call
    except ServiceError as error:
        elapsed = time.monotonic() - began
        assert (error.kind, error.reason) == (ErrorKind.UNAVAILABLE, "STORAGE_UNAVAILABLE"), error
        assert error.message == "storage is unavailable"  # no driver detail
        return error, elapsed
    raise AssertionError("the call succeeded but a storage fault was expected")


def fresh_database(cluster: Cluster, service: str) -> str:
    """A new role and database of `service`'s (e.g. inventory_3): no test sees another's
    rows or settings."""
    name = f"{service}_{next(_databases)}"
    return cluster.ensure_database(name)


def database_name(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


@pytest.fixture
async def open_inventory(
    postgres_cluster: Cluster, seed_file: pathlib.Path
) -> AsyncIterator[Callable[[PoolSettings], Awaitable[tuple[InventoryStore, str]]]]:
    """Opens a seeded inventory store on a database of its own with the given pool;
    closes every one afterwards."""
    opened: list[InventoryStore] = []

    async def open_store(pool: PoolSettings) -> tuple[InventoryStore, str]:
        dsn = fresh_database(postgres_cluster, "inventory")
        store = await InventoryStore.open(dsn, pool=pool)
        opened.append(store)
        await store.seed(seed_file)
        return store, database_name(dsn)

    yield open_store
    for store in opened:
        await store.aclose()


def mug(quantity: int = 1) -> list[Item]:
    return [Item("SKU-MUG", quantity)]


def lock_row(cluster: Cluster, dbname: str, sku: str) -> psycopg.Connection[tuple[object, ...]]:
    """An admin connection in a transaction that holds `sku`'s product row (FOR UPDATE),
    as a stuck transaction of another instance would; rolled back by the caller."""
    conn = cluster.admin(dbname)
    conn.execute("BEGIN")
    conn.execute("SELECT 1 FROM products WHERE sku = %s FOR UPDATE", [sku])
    return conn


def lock_waiters(cluster: Cluster, dbname: str) -> int:
    """How many of the service's backends wait for a lock now."""
    with cluster.admin(dbname) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND application_name LIKE 'shopmesh-%%' AND wait_event_type = 'Lock'",
            [dbname],
        ).fetchone()
    assert row is not None
    return int(row[0])


TIMEOUTS = {
    # lock_timeout fires first (55P03 lock_not_available)...
    "lock_timeout": PoolSettings(lock_timeout_ms=300, statement_timeout_ms=30_000),
    # ...or, with no lock_timeout, statement_timeout does (57014 query_canceled).
    "statement_timeout": PoolSettings(lock_timeout_ms=0, statement_timeout_ms=300),
}


@pytest.mark.parametrize("limit", TIMEOUTS)
async def test_a_statement_past_its_timeout_is_a_storage_fault_and_changes_nothing(
    postgres_cluster: Cluster,
    open_inventory: Callable[[PoolSettings], Awaitable[tuple[InventoryStore, str]]],
    limit: str,
) -> None:
    """Another transaction holds the product row a reservation needs: the reservation's
    UPDATE waits past the timeout, the caller hears STORAGE_UNAVAILABLE within it, and
    the reservation's own first statement (its claim) is rolled back with it."""
    pool = TIMEOUTS[limit]
    bound = max(pool.lock_timeout_ms, 0) or pool.statement_timeout_ms
    store, dbname = await open_inventory(pool)
    holder = lock_row(postgres_cluster, dbname, "SKU-MUG")
    try:
        _, elapsed = await refusal(store.reserve("timeout-1", "alice", mug(), HOLD_SECONDS))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert elapsed < bound / 1000 + MARGIN_SECONDS, elapsed
    product = await store.product("SKU-MUG")
    assert (product.available, product.held) == (PRODUCTS["SKU-MUG"][1], 0)  # nothing applied
    with pytest.raises(ServiceError) as missing:
        await store.reservation("timeout-1")
    assert missing.value.kind is ErrorKind.NOT_FOUND  # not even the claim
    held = await store.reserve("timeout-1", "alice", mug(), HOLD_SECONDS)  # the retry
    assert held.state is ReservationState.HELD
    product = await store.product("SKU-MUG")
    assert (product.available, product.held) == (PRODUCTS["SKU-MUG"][1] - 1, 1)
    record_fault(f"PostgreSQL: a row locked past {limit} ({bound} ms)", {"ok": 1, "failed": 1})


async def test_an_exhausted_pool_refuses_within_the_acquire_timeout(
    postgres_cluster: Cluster,
    open_inventory: Callable[[PoolSettings], Awaitable[tuple[InventoryStore, str]]],
) -> None:
    """Both pooled connections are busy in transactions stuck on a locked row: the calls
    beyond the pool wait at most acquire_timeout_seconds and hear STORAGE_UNAVAILABLE;
    they changed nothing; once the row is let go the stuck ones finish, and every call
    works again on the same pool."""
    pool = PoolSettings(size=2, acquire_timeout_seconds=0.5, lock_timeout_ms=20_000)
    store, dbname = await open_inventory(pool)
    holder = lock_row(postgres_cluster, dbname, "SKU-MUG")
    try:
        stuck = [
            asyncio.create_task(store.reserve(f"stuck-{n}", "alice", mug(), HOLD_SECONDS))
            for n in range(pool.size)
        ]
        await eventually(
            lambda: lock_waiters(postgres_cluster, dbname) == pool.size,
            "every pooled connection to wait for the locked row",
        )
        beyond = [
            refusal(store.reserve("beyond-1", "bob", [Item("SKU-TEA", 1)], HOLD_SECONDS)),
            refusal(store.product("SKU-TEA")),
            refusal(store.reserve("stuck-0", "alice", mug(), HOLD_SECONDS)),  # a repeat
        ]
        refused = await asyncio.gather(*beyond)
        assert not any(task.done() for task in stuck)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    slowest = max(elapsed for _, elapsed in refused)
    assert slowest < pool.acquire_timeout_seconds + MARGIN_SECONDS, slowest
    assert min(elapsed for _, elapsed in refused) >= pool.acquire_timeout_seconds * 0.9
    held = await asyncio.wait_for(asyncio.gather(*stuck), WAIT_SECONDS)
    assert all(r.state is ReservationState.HELD for r in held)
    tea = await store.product("SKU-TEA")
    assert (tea.available, tea.held) == (PRODUCTS["SKU-TEA"][1], 0)  # the refused changed nothing
    with pytest.raises(ServiceError):
        await store.reservation("beyond-1")
    again = await reserve_many(store)
    assert all(r.state is ReservationState.HELD for r in again)
    product = await store.product("SKU-MUG")
    assert (product.available, product.held) == (PRODUCTS["SKU-MUG"][1] - 2, 2)  # none doubled
    record_fault(
        f"PostgreSQL: pool exhausted ({pool.size} stuck, {len(refused)} calls beyond)",
        {"ok": len(held) + len(again), "failed": len(refused)},
    )


async def reserve_many(store: InventoryStore) -> list[Reservation]:
    """More concurrent calls than the pool has connections, none stuck: all are served."""
    return list(
        await asyncio.gather(
            *(
                store.reserve(f"after-{n}", "carol", [Item("SKU-TEA", 1)], HOLD_SECONDS)
                for n in range(6)
            )
        )
    )


def _refuse_by_database_limit(conn: psycopg.Connection[tuple[object, ...]], name: str) -> str:
    conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 0").format(sql.Identifier(name)))
    return "ALTER DATABASE {} CONNECTION LIMIT -1"


def _refuse_by_nologin(conn: psycopg.Connection[tuple[object, ...]], name: str) -> str:
    conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(name)))
    return "ALTER ROLE {} LOGIN"


REFUSALS = {
    "database CONNECTION LIMIT 0": _refuse_by_database_limit,
    "role NOLOGIN": _refuse_by_nologin,
}


@pytest.mark.parametrize("how", REFUSALS)
async def test_a_server_refusing_connections_is_a_storage_fault_until_it_accepts_again(
    postgres_cluster: Cluster,
    open_inventory: Callable[[PoolSettings], Awaitable[tuple[InventoryStore, str]]],
    how: str,
) -> None:
    """The service's connections are terminated and new ones refused: reads and writes
    hear STORAGE_UNAVAILABLE at once (no hang, no INTERNAL) and change nothing; once
    connections are allowed again the same pool reconnects and every call works."""
    pool = PoolSettings(size=2, acquire_timeout_seconds=2.0, connect_timeout_seconds=2.0)
    store, dbname = await open_inventory(pool)
    await store.reserve("before", "alice", mug(), HOLD_SECONDS)  # the pool is connected
    with postgres_cluster.admin() as admin:
        undo = REFUSALS[how](admin, dbname)
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            [dbname],
        )
        try:
            refused = [
                await refusal(store.reserve("during", "alice", mug(), HOLD_SECONDS)),
                await refusal(store.product("SKU-MUG")),
                await refusal(store.reserve("before", "alice", mug(), HOLD_SECONDS)),
            ]
        finally:
            admin.execute(sql.SQL(undo).format(sql.Identifier(dbname)))
    assert max(elapsed for _, elapsed in refused) < pool.acquire_timeout_seconds, refused
    during = await store.reserve("during", "alice", mug(), HOLD_SECONDS)
    assert during.state is ReservationState.HELD
    again = await store.reserve("before", "alice", mug(), HOLD_SECONDS)  # the repeat
    assert again.state is ReservationState.HELD
    product = await store.product("SKU-MUG")
    assert (product.available, product.held) == (PRODUCTS["SKU-MUG"][1] - 2, 2)  # none doubled
    record_fault(f"PostgreSQL: new connections refused ({how})", {"ok": 4, "failed": len(refused)})
