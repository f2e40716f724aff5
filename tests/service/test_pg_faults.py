"""PostgreSQL-only faults against the real server: a row lock held past the lock or
statement timeout, the connection pool exhausted, the server refusing new connections,
and the server killed (kill -9) and restarted under load.

What a caller must see in each: STORAGE_UNAVAILABLE (a retryable UNAVAILABLE) within the
bound the pool's settings give, never a hang and never INTERNAL; nothing half applied and
nothing doubled; and once the fault is gone, every call works again on the same pool,
without restarting anything. Small timeouts (PoolSettings) keep each test to seconds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import pathlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import grpc
import psycopg
import pytest
from psycopg import sql

from services.common.errors import ErrorKind, ServiceError
from services.common.postgresql import PoolSettings
from services.common.status import error_details
from services.inventory.domain import Item, Reservation, ReservationState
from services.inventory.store import InventoryStore
from services.payment.domain import PaymentState
from services.payment.store import PaymentStore
from shop.order.v1 import order_pb2
from shopmesh.postgres import Cluster
from shopmesh.seed import write_seed
from tests.helpers import (
    ACCOUNTS,
    PRODUCTS,
    Client,
    Ledger,
    assert_calls_resolved,
    assert_invariants,
    eventually,
    record_fault,
    wait_for,
)
from tests.stack import server_databases, stack_factory

pytestmark = pytest.mark.alone("statement and pool timeouts are asserted against the clock")

T = TypeVar("T")

HOLD_SECONDS = 900.0
MARGIN_SECONDS = 1.0
"""What a refusal may take beyond its bound here: the event loop, a busy 2-core machine."""
WAIT_SECONDS = 10.0

_databases = itertools.count(1)

# The process stack's seed: enough stock and money that no order of the load is refused.
LOAD_PRODUCTS = {"SKU-TEA": (450, 100_000)}
LOAD_ACCOUNTS = {"rich": 100_000_000}
STORAGE_CLASS = {"STORAGE_UNAVAILABLE", "INVENTORY_UNAVAILABLE", "PAYMENT_UNAVAILABLE"}
"""The UNAVAILABLE reasons a CreateOrder may come back with while a database is down:
the order service's own store's, or a saga cancelled by a participant's."""


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
    """A new role and database of `service`'s (e.g. inventory_fault3): no test sees
    another's rows or settings."""
    name = f"{service}_fault{next(_databases)}"
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


def terminate_backends(admin: psycopg.Connection[tuple[object, ...]], dbname: str) -> None:
    """Ends the service's connections; each backend is gone before this returns (up to
    5 s each), so no call finds one. The event loop does not run meanwhile (this blocks
    it), so the pool cannot reconnect before the refusal is in place."""
    admin.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s",
        [dbname],
    )


@contextlib.contextmanager
def database_connection_limit(cluster: Cluster, dbname: str) -> Iterator[None]:
    """The database takes no connection (53300 too many connections for database)."""
    name = sql.Identifier(dbname)
    with cluster.admin() as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 0").format(name))
        try:
            terminate_backends(admin, dbname)
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT -1").format(name))


@contextlib.contextmanager
def role_nologin(cluster: Cluster, dbname: str) -> Iterator[None]:
    """The service's role may not log in (28000 invalid_authorization_specification)."""
    role = sql.Identifier(dbname)  # the role is named as its database
    with cluster.admin() as admin:
        admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
        try:
            terminate_backends(admin, dbname)
            yield
        finally:
            admin.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role))


@contextlib.contextmanager
def server_full(cluster: Cluster, dbname: str) -> Iterator[None]:
    """Every connection slot of the server taken (53300 too many clients already, for
    max_connections), by another role's idle connections; the superuser's reserved
    slots stay free for the admin connection."""
    dsn = cluster.ensure_database("filler")
    fillers: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        with cluster.admin() as admin:
            terminate_backends(admin, dbname)
            (max_connections,) = admin.execute("SHOW max_connections").fetchone() or ("0",)
            for _ in range(int(str(max_connections))):
                try:
                    fillers.append(psycopg.connect(dsn, connect_timeout=5))
                except psycopg.OperationalError as full:
                    assert "too many clients" in str(full) or "reserved" in str(full), full
                    break
            else:
                raise AssertionError("the server took max_connections logins and more")
            yield  # the admin connection held meanwhile: closed, it would free a slot
    finally:
        for conn in fillers:
            conn.close()


REFUSALS = {
    "db CONNECTION LIMIT 0": database_connection_limit,
    "role NOLOGIN": role_nologin,
    "max_connections reached": server_full,
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
    with REFUSALS[how](postgres_cluster, dbname):
        refused = [
            await refusal(store.reserve("during", "alice", mug(), HOLD_SECONDS)),
            await refusal(store.product("SKU-MUG")),
            await refusal(store.reserve("before", "alice", mug(), HOLD_SECONDS)),
        ]
    assert max(elapsed for _, elapsed in refused) < pool.acquire_timeout_seconds, refused
    during = await store.reserve("during", "alice", mug(), HOLD_SECONDS)
    assert during.state is ReservationState.HELD
    again = await store.reserve("before", "alice", mug(), HOLD_SECONDS)  # the repeat
    assert again.state is ReservationState.HELD
    product = await store.product("SKU-MUG")
    assert (product.available, product.held) == (PRODUCTS["SKU-MUG"][1] - 2, 2)  # none doubled
    record_fault(f"PostgreSQL refuses logins ({how})", {"ok": 4, "failed": len(refused)})


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` now (the postmaster's backends and workers)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not reaped, does not)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_server(cluster: Cluster) -> None:
    """kill -9 of the postmaster, by its PID, as a crash; returns once its backends,
    which notice their parent gone and exit, are gone too (until then the data directory
    is in use and a new server refuses it)."""
    orphans = children(cluster.process.pid)
    cluster.process.kill()
    wait_for(lambda: not any(alive(pid) for pid in orphans), "the backends to exit")


def restart_server(cluster: Cluster) -> None:
    """The server started again on the same data directory and port (crash recovery
    first), so the pools' URLs reach it again; returns once it accepts logins."""
    cluster.settings = dataclasses.replace(cluster.settings, port=cluster.port)
    cluster.start()


class OrderLoad:
    """Orders through the real stores as the saga makes them: hold the stock, authorize
    the payment, commit the stock, capture the payment; a step that hears
    STORAGE_UNAVAILABLE is retried with the same ids (the saga does, up to its budget),
    so every order started ends captured. Anything else a store raises is kept: a caller
    would have heard INTERNAL."""

    def __init__(self, inventory: InventoryStore, payment: PaymentStore, workers: int) -> None:
        self.inventory = inventory
        self.payment = payment
        self.calls = {"ok": 0, "failed": 0}
        self.unexpected: list[BaseException] = []
        self.done: list[str] = []
        self._stopping = False
        self._tasks = [asyncio.create_task(self._work(w)) for w in range(workers)]

    async def stop(self) -> None:
        """Lets each worker finish the order it is in, then stops it."""
        self._stopping = True
        await asyncio.wait_for(asyncio.gather(*self._tasks), WAIT_SECONDS * 2)

    async def _work(self, worker: int) -> None:
        for n in itertools.count():
            if self._stopping:
                return
            await self._order(f"load-{worker}-{n}")

    async def _order(self, order_id: str) -> None:
        price = PRODUCTS["SKU-TEA"][0]
        for step in (
            functools.partial(
                self.inventory.reserve, order_id, "rich", [Item("SKU-TEA", 1)], 900.0
            ),
            functools.partial(
                self.payment.authorize, order_id, "rich", price, "USD", authorization_seconds=900.0
            ),
            functools.partial(self.inventory.commit, order_id, "rich"),
            functools.partial(self.payment.capture, order_id, "rich"),
        ):
            await self._until_done(step)
        self.done.append(order_id)

    async def _until_done(self, step: Callable[[], Awaitable[object]]) -> None:
        deadline = time.monotonic() + WAIT_SECONDS * 3
        while True:
            try:
                await step()
                self.calls["ok"] += 1
                return
            except ServiceError as error:
                if (error.kind, error.reason) != (ErrorKind.UNAVAILABLE, "STORAGE_UNAVAILABLE"):
                    raise
                self.calls["failed"] += 1
            except Exception as error:  # what a caller would hear as INTERNAL
                self.unexpected.append(error)
            if time.monotonic() > deadline:
                raise AssertionError("a step never succeeded again after the restart")
            await asyncio.sleep(0.05)


async def test_the_server_killed_and_restarted_under_load_loses_and_doubles_nothing(
    postgres_cluster: Cluster, seed_file: pathlib.Path
) -> None:
    """Orders run on eight workers; the server is killed with SIGKILL mid-load and
    started again on the same data directory. Calls during the outage hear only
    STORAGE_UNAVAILABLE; the same pools reconnect by themselves; every order ends
    captured, and stock and money add up exactly: none lost, none applied twice."""
    pool = PoolSettings(size=4, acquire_timeout_seconds=1.0, connect_timeout_seconds=1.0)
    inventory = await InventoryStore.open(fresh_database(postgres_cluster, "inventory"), pool=pool)
    payment = await PaymentStore.open(fresh_database(postgres_cluster, "payment"), pool=pool)
    try:
        await inventory.seed(seed_file)
        await payment.seed(seed_file)
        load = OrderLoad(inventory, payment, workers=8)
        await eventually(lambda: len(load.done) >= 20, "orders before the kill")
        await asyncio.to_thread(kill_server, postgres_cluster)  # the load goes on meanwhile
        await eventually(lambda: load.calls["failed"] > 0, "callers to see the server gone")
        await asyncio.to_thread(restart_server, postgres_cluster)
        after = len(load.done)
        await eventually(lambda: len(load.done) >= after + 20, "orders after the restart")
        await load.stop()
        assert not load.unexpected, load.unexpected[:5]

        orders = len(load.done)
        tea = await inventory.product("SKU-TEA")
        assert (tea.available, tea.held, tea.sold) == (
            PRODUCTS["SKU-TEA"][1] - orders,
            0,
            orders,
        )
        states = [(await payment.payment(order_id)).state for order_id in load.done]
        assert set(states) == {PaymentState.CAPTURED}
        account = await payment.account("rich")
        captured = orders * PRODUCTS["SKU-TEA"][0]
        assert (account.available, account.held) == (ACCOUNTS["rich"] - captured, 0)
    finally:
        await inventory.aclose()
        await payment.aclose()
    record_fault(
        f"PostgreSQL kill -9, restart under load ({orders} orders)",
        load.calls,
    )


class CreateOrderLoad:
    """CreateOrder calls to the order service process from a few threads, each a new
    request id (retried with the same id after an UNAVAILABLE, as a client would, at most
    RETRIES_PER_ORDER times), recorded as helpers.assert_calls_resolved reads them: ok,
    failed (a definite refusal) or unknown (UNAVAILABLE: placed or not, the caller cannot
    tell). Every status other than OK and UNAVAILABLE is kept as unexpected."""

    RETRIES_PER_ORDER = 3

    def __init__(self, client: Client, threads: int) -> None:
        self.client = client
        self.calls: list[tuple[str, str]] = []
        self.unavailable: Counter[str] = Counter()
        """The reasons UNAVAILABLE came with."""
        self.unexpected: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def ok(self) -> int:
        return sum(1 for _, outcome in self.calls if outcome == "ok")

    def unknown(self) -> int:
        return sum(1 for _, outcome in self.calls if outcome == "unknown")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=WAIT_SECONDS * 3)
            assert not thread.is_alive(), "a caller is stuck"

    def summary(self) -> dict[str, int]:
        return dict(Counter(outcome for _, outcome in self.calls))

    def _run(self, thread: int) -> None:
        for n in itertools.count():
            request_id = f"kill-{thread}-{n}"
            for _ in range(1 + self.RETRIES_PER_ORDER):
                if self._stop.is_set():
                    return
                if self._call(request_id):
                    break

    def _call(self, request_id: str) -> bool:
        """One CreateOrder; whether the caller is done with this request id."""
        try:
            self.client.create_order("rich", request_id, [("SKU-TEA", 1)], timeout=20)
        except grpc.RpcError as error:
            details = error_details(error)
            if details.code == grpc.StatusCode.UNAVAILABLE:
                self.calls.append((request_id, "unknown"))
                self.unavailable[details.reason] += 1
                time.sleep(0.1)
                return False
            self.calls.append((request_id, "failed"))
            self.unexpected.append(f"{details.code.name} {details.reason}: {details.message}")
            return True
        self.calls.append((request_id, "ok"))
        return True


def test_the_server_killed_under_order_load_through_the_services_loses_and_doubles_nothing(
    postgres_cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    """The three service processes on PostgreSQL, CreateOrder load from four callers; the
    server is killed with SIGKILL mid-load and started again on the same data directory.
    Callers hear OK or UNAVAILABLE, never INTERNAL; the services, not restarted, serve
    again once it is back (their pools replace the dead connections); every order ends
    CONFIRMED or CANCELLED (the sagas the kill interrupted resume), no request id placed
    two orders, and stock and money add up exactly (the Ledger)."""
    seed = write_seed(tmp_path / "seed.json", LOAD_PRODUCTS, LOAD_ACCOUNTS)
    ledger = Ledger({s: q for s, (_, q) in LOAD_PRODUCTS.items()}, dict(LOAD_ACCOUNTS))
    with stack_factory(tmp_path / "stack", seed, server_databases(postgres_cluster)) as make:
        stack, client = make(
            call_timeout_seconds="1",
            step_retry_seconds="10",
            max_backoff_seconds="0.5",
            max_open_orders_per_user="1000",
        )
        services = (stack.inventory, stack.payment, stack.order)
        pids = [service.pid for service in services]
        load = CreateOrderLoad(client, threads=4)
        try:
            wait_for(lambda: load.ok() >= 20, "orders before the kill")
            kill_server(postgres_cluster)
            wait_for(lambda: load.unknown() > 0, "callers to see the server gone")
            restart_server(postgres_cluster)
            after = load.ok()
            wait_for(lambda: load.ok() >= after + 20, "orders after the restart", timeout=60)
        finally:
            load.stop()
        assert not load.unexpected, load.unexpected[:5]  # no INTERNAL, nothing but these:
        assert set(load.unavailable) <= STORAGE_CLASS, load.unavailable
        assert [service.pid for service in services] == pids  # none restarted...
        assert all(service.running() for service in services)  # ...and none died
        assert_calls_resolved(client, "rich", load.calls)  # every order final, none doubled
        assert_invariants(client, ledger)
        final = Counter(order.state for order in client.list_orders("rich"))
    confirmed, cancelled = (
        final[order_pb2.ORDER_STATE_CONFIRMED],
        final[order_pb2.ORDER_STATE_CANCELLED],
    )
    record_fault(
        f"PostgreSQL kill -9, CreateOrder load ({confirmed} confirmed, {cancelled} cancelled)",
        load.summary(),
    )
