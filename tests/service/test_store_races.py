"""The races of docs/postgres-concurrency.md on the real stores: two instances of a store
(two `Store.open`s, two connection pools) on one PostgreSQL database, each making one
call at the same instant, and what a user then observes.

The calls are made to meet, not left to chance: a third connection (the holder) takes a
lock both calls must pass (a row lock on the contended row, or a table lock that lets
reads through and stops writes), both calls are started, the test waits until
pg_stat_activity shows both waiting on a lock (polled within a bound, never slept for),
then the holder lets go and both run on at once. tests/service/test_pg_races.py shows
the same races statement by statement on the port in bench/pg_sql.py; these show that
the stores' own transactions keep the invariants."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import asyncpg
import pytest
from psycopg import sql

from services.common.db import Store
from services.common.errors import ErrorKind, ServiceError
from services.common.postgresql import PoolSettings
from services.inventory.domain import Item, ReservationState
from services.inventory.store import InventoryStore
from services.order import history
from services.order.domain import Lease, LeaseLost, LineItem, Phase, Quota
from services.order.store import OrderStore
from services.payment.domain import PaymentState
from services.payment.store import PaymentStore
from shopmesh.postgres import Cluster
from shopmesh.seed import write_seed

LOCK_WAIT_TIMEOUT_SECONDS = 4.0
"""How long each step of a schedule may take to form (a call seen waiting)."""
POOL = PoolSettings(lock_timeout_ms=20_000)
"""The stores' pools here: a lock_timeout well above the schedules' bounds (the calls
wait on the holder for two steps at most), so that on a loaded machine a schedule that
forms slowly is not cut short by the stores' 5 s."""
DEADLOCKS_REACH_CALLERS: dict[str, Any] = {
    "settings": {"deadlock_timeout": "60s"},
    "pool": PoolSettings(),
}
"""For a test that must see whether a deadlock happens at all: the stores run a
transaction aborted by one (40P01) again, hiding it from the caller, so the detector
waits longer than the stores' own lock_timeout (5 s), and a deadlock reaches a caller
as STORAGE_UNAVAILABLE instead."""
S = TypeVar("S", bound=Store)
T = TypeVar("T")

PRODUCTS = {"SKU-A": (100, 10), "SKU-B": (200, 10), "SKU-C": (300, 10), "SKU-LAST": (500, 1)}
ACCOUNTS = {"alice": 100_000, "bob": 100_000}
ITEMS = (LineItem("SKU-A", 1),)


@dataclass
class Instances(Generic[S]):
    """Two instances of one store on one database, a holder and an observer."""

    one: S
    two: S
    holder: asyncpg.Connection
    observer: asyncpg.Connection
    database: str

    async def waiting(
        self,
        count: int,
        calls: Sequence[asyncio.Future[Any]],
        or_done: asyncio.Future[Any] | None = None,
    ) -> None:
        """Returns once `count` of this database's backends wait on a lock, or once
        `or_done` has finished; fails if one of `calls` finishes first (it passed where
        it should have waited)."""
        deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if or_done is not None and or_done.done():
                return
            for call in calls:
                if call.done():
                    raise AssertionError(
                        f"a call finished before {count} calls waited on a lock: {call.result()!r}"
                    )
            waiting = await self.observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = $1 AND wait_event_type = 'Lock'",
                self.database,
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{count} calls never waited on a lock at once")

    async def hold(self, statement: str) -> None:
        """The holder takes a lock (`statement`) in a transaction kept open."""
        await self.holder.execute("BEGIN")
        await self.holder.execute(statement)

    async def let_go(self, how: str = "COMMIT") -> None:
        await self.holder.execute(how)

    async def at_once(self, lock: str, *calls: Awaitable[T]) -> list[T | Exception]:
        """Runs `calls` so that they meet: each waits on `lock` until every one does."""
        await self.hold(lock)
        started = [asyncio.ensure_future(outcome(call)) for call in calls]
        try:
            await self.waiting(len(started), started)
        finally:
            await self.let_go()
        return list(await asyncio.gather(*started))

    async def in_turn(
        self, lock: str, first: Awaitable[T], second: Awaitable[T]
    ) -> list[T | Exception]:
        """Runs `first` until it waits on `lock`, then `second` until it waits too (on
        `lock`, or on what `first` holds by then); then lets both go."""
        await self.hold(lock)
        started = [asyncio.ensure_future(outcome(first))]
        try:
            await self.waiting(1, started)
            started.append(asyncio.ensure_future(outcome(second)))
            await self.waiting(2, started)
        finally:
            await self.let_go()
        return list(await asyncio.gather(*started))

    async def value(self, query: str, *args: object) -> Any:
        return await self.observer.fetchval(query, *args)


async def outcome(call: Awaitable[T]) -> T | Exception:
    """What the call returns, or the error it answers (a ServiceError, LeaseLost) as a
    value; anything else (a unique violation, a deadlock reaching the caller) is raised."""
    try:
        return await call
    except (ServiceError, LeaseLost) as error:
        return error


def reason(result: object) -> str:
    return result.reason if isinstance(result, ServiceError) else ""


class OpenInstances(Protocol):
    async def __call__(
        self,
        store: type[S],
        settings: Mapping[str, str] | None = None,
        pool: PoolSettings | None = None,
    ) -> Instances[S]: ...


@pytest.fixture(scope="module")
def databases(postgres_cluster: Cluster) -> Callable[[str, Mapping[str, str]], str]:
    """A database of the module's server for a store and server settings (made the first
    time it is asked for; each CREATE DATABASE costs the server's shutdown checkpoint a
    copy of the template, so the tests share them): its DSN."""
    made: dict[str, str] = {}

    def database(service: str, settings: Mapping[str, str]) -> str:
        name = f"{service}_races" + "".join(f"_{n}" for n in sorted(settings))
        if name not in made:
            made[name] = postgres_cluster.ensure_database(name)
            with postgres_cluster.admin() as admin:  # settings a role may not make itself
                for setting, value in settings.items():
                    admin.execute(
                        sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                            sql.Identifier(name), sql.Identifier(setting), sql.Literal(value)
                        )
                    )
        return made[name]

    return database


@pytest.fixture
async def instances(
    databases: Callable[[str, Mapping[str, str]], str], tmp_path: pathlib.Path
) -> AsyncIterator[OpenInstances]:
    """Opens two instances of a store on its database, emptied (with the server
    `settings` given, the stores' `pool` settings (POOL if none); seeded with PRODUCTS and ACCOUNTS
    where the store has a seed); closes them afterwards."""
    seed = write_seed(tmp_path / "seed.json", PRODUCTS, ACCOUNTS)
    async with contextlib.AsyncExitStack() as stack:

        async def open_instances(
            store: type[S],
            settings: Mapping[str, str] | None = None,
            pool: PoolSettings | None = None,
        ) -> Instances[S]:
            dsn = databases(store.service, settings or {})
            pool = pool or POOL
            one = await store.open(dsn, pool=pool)  # the first open applies the migrations
            stack.push_async_callback(one.aclose)
            two = await store.open(dsn, pool=pool)
            stack.push_async_callback(two.aclose)
            holder, observer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
            stack.push_async_callback(holder.close)
            stack.push_async_callback(observer.close)
            tables = await observer.fetchval(
                "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename NOT LIKE '%yoyo%'"
            )
            await observer.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
            if isinstance(one, InventoryStore | PaymentStore):
                await one.seed(seed)
            database = await observer.fetchval("SELECT current_database()")
            return Instances(one, two, holder, observer, database)

        yield open_instances


# Orders.


async def test_duplicate_create_answers_one_order(instances: OpenInstances) -> None:
    """Two CreateOrders with one request id reach two instances at once (Envoy retrying
    on another host): one order is made, and both callers are answered that order."""
    k = await instances(OrderStore)
    first, second = await k.at_once(
        "LOCK TABLE orders IN EXCLUSIVE MODE",
        k.one.create(
            "order-1",
            "alice",
            "req-1",
            ITEMS,
            lease=Lease("order-1", "one", 1),
            lease_seconds=30,
        ),
        k.two.create(
            "order-2",
            "alice",
            "req-1",
            ITEMS,
            lease=Lease("order-2", "two", 1),
            lease_seconds=30,
        ),
    )
    assert not isinstance(first, Exception) and not isinstance(second, Exception)
    (order_a, created_a), (order_b, created_b) = first, second
    assert order_a.order_id == order_b.order_id, "both callers get the same order"
    assert sorted([created_a, created_b]) == [False, True], "one created it"
    assert await k.value("SELECT count(*) FROM orders") == 1
    assert await k.value("SELECT count(*) FROM sagas") == 1
    assert await k.value("SELECT count(*) FROM saga_leases") == 1


async def test_quota_holds_under_concurrent_creates(
    instances: OpenInstances,
) -> None:
    """A user one order below the open-order limit creates two at once, on two
    instances: one is made, the other refused (TOO_MANY_OPEN_ORDERS); the limit holds."""
    k = await instances(OrderStore)
    quota = Quota(max_open_orders=2, max_declines=100, decline_window_seconds=3600)
    await k.one.create("order-0", "alice", "req-0", ITEMS, quota=quota)
    results = await k.at_once(
        "LOCK TABLE orders IN EXCLUSIVE MODE",
        k.one.create("order-1", "alice", "req-1", ITEMS, quota=quota),
        k.two.create("order-2", "alice", "req-2", ITEMS, quota=quota),
    )
    refused = [r for r in results if isinstance(r, Exception)]
    assert [reason(r) for r in refused] == ["TOO_MANY_OPEN_ORDERS"], f"one refused: {results}"
    assert isinstance(refused[0], ServiceError)
    assert refused[0].kind is ErrorKind.RESOURCE_EXHAUSTED
    pending = "SELECT count(*) FROM orders WHERE user_id = 'alice' AND state = 'PENDING'"
    assert await k.value(pending) == 2, "the user has no more open orders than the limit"


async def test_list_orders_skips_no_late_commit(instances: OpenInstances) -> None:
    """ListOrders pages newest first by `seq`. An order whose transaction took its seq
    and then stalled (here behind another transaction's uncommitted row with its request
    id) while a newer order is created on another instance and a page is read: the walk
    must not skip the stalled order once it commits. Every walk lists, between its
    newest and its oldest order, every order there is."""
    k = await instances(OrderStore)
    await k.one.create("order-1", "alice", "req-1", ITEMS)
    # Another transaction's row with order-2's request id, not committed: order-2's
    # INSERT takes its seq, then waits to learn whether the key is free.
    await k.hold(
        "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state, created_at,"
        " updated_at) VALUES ('other', 'alice', 'req-2', '', 'PENDING', 0, 0)"
    )
    late = asyncio.ensure_future(outcome(k.one.create("order-2", "alice", "req-2", ITEMS)))
    newer: asyncio.Future[Any] | None = None
    try:
        await k.waiting(1, [late])
        newer = asyncio.ensure_future(outcome(k.two.create("order-3", "alice", "req-3", ITEMS)))
        # Either it waits behind order-2 (the user's creates one at a time), or it
        # commits while order-2 is still open: the page below is read in either case.
        await k.waiting(2, [late], or_done=newer)
        page_size = 2
        first_page = await k.one.orders("alice", None, page_size)
    finally:
        await k.let_go("ROLLBACK")  # the other transaction gave up: order-2 is made
    for call in (late, newer):
        assert call is not None and not isinstance(await call, Exception)
    walk = [o.seq for o in first_page]
    if len(first_page) == page_size:
        while page := await k.one.orders("alice", walk[-1], page_size):
            walk += [o.seq for o in page]
    every = [o.seq for o in await k.one.orders("alice", None, 100)]
    assert len(every) == 3
    between = [s for s in every if walk[-1] <= s <= walk[0]]
    assert walk == between, f"the walk {walk} skipped an order of {every}"


# Saga leases.


async def test_one_instance_adopts_an_expired_saga(instances: OpenInstances) -> None:
    """Two instances find one saga whose owner died (its lease expired) and take its
    lease at once: one of them drives it, with the next epoch; the other gets none."""
    k = await instances(OrderStore)
    await k.one.create(
        "order-1", "alice", "req-1", ITEMS, lease=Lease("order-1", "dead", 1), lease_seconds=0
    )
    results = await k.at_once(
        "SELECT 1 FROM saga_leases WHERE order_id = 'order-1' FOR UPDATE",
        k.one.acquire("order-1", "one", 30),
        k.two.acquire("order-1", "two", 30),
    )
    won = [r for r in results if r is not None]
    assert len(won) == 1, f"one instance drives the saga: {results}"
    assert isinstance(won[0], Lease) and won[0].epoch == 2
    assert await k.one.lease("order-1") == won[0]


@pytest.mark.parametrize("schedule", ["write_first", "at_once"])
async def test_a_lost_lease_cannot_write_after_adoption(
    instances: OpenInstances, schedule: str
) -> None:
    """The owner of a saga whose lease just expired makes a fenced write while another
    instance adopts the saga. Either the write commits before the new epoch begins (the
    adoption waits for it), or it is refused (LeaseLost) and changes nothing: never a
    write under the old epoch after the new one began."""
    k = await instances(OrderStore)
    old = Lease("order-1", "one", 1)
    await k.one.create("order-1", "alice", "req-1", ITEMS, lease=old, lease_seconds=0)
    priced = [LineItem("SKU-A", 1, 100, "USD")]
    if schedule == "at_once":
        write, adopted = await k.at_once(
            "SELECT 1 FROM saga_leases WHERE order_id = 'order-1' FOR UPDATE",
            k.one.record_reserved(old, priced, "USD"),
            k.two.acquire("order-1", "two", 30),
        )
    else:
        # The write passes its fence and stops at the saga row; the adoption then starts.
        await k.hold("SELECT 1 FROM sagas WHERE order_id = 'order-1' FOR UPDATE")
        writing = asyncio.ensure_future(outcome(k.one.record_reserved(old, priced, "USD")))
        try:
            await k.waiting(1, [writing])
            adopting = asyncio.ensure_future(outcome(k.two.acquire("order-1", "two", 30)))
            # The adoption must wait for the fenced write; if it finished here, the
            # write would land under epoch 1 after epoch 2 began.
            await k.waiting(2, [writing, adopting])
        finally:
            await k.let_go()
        write, adopted = await writing, await adopting
        assert write is True, "the write, fenced before the adoption, is made"
    assert adopted == Lease("order-1", "two", 2), "the other instance adopts the saga"
    phase = (await k.one.saga("order-1")).phase
    if write is True:
        assert phase is Phase.RESERVED
    else:
        assert isinstance(write, LeaseLost), f"the old owner's write: {write!r}"
        assert phase is Phase.STARTED, "a refused write changed nothing"


@pytest.mark.parametrize("step", ["record_reserved", "advance"])
async def test_a_cancel_and_a_saga_step_log_one_after_the_other(
    instances: OpenInstances, step: str
) -> None:
    """A user's cancel on one instance and a saga step of the same order on the other, at
    the same instant. Each first updates the order's saga row, which it then holds until
    its commit, and only then takes the log's next sequence number: the second waits for
    the first and takes the number after it, so neither fails on the log's key, and the
    log has no gap and replays to the row."""
    k = await instances(OrderStore)
    lease = Lease("order-1", "one", 1)
    await k.one.create("order-1", "alice", "req-1", ITEMS, lease=lease, lease_seconds=30)
    priced = [LineItem("SKU-A", 1, 100, "USD")]
    if step == "advance":
        assert await k.one.record_reserved(lease, priced, "USD")
        stepping = k.one.advance(lease, Phase.RESERVED, Phase.COMMITTING)
    else:
        stepping = k.one.record_reserved(lease, priced, "USD")
    stepped, asked = await k.at_once(
        "SELECT 1 FROM sagas WHERE order_id = 'order-1' FOR UPDATE",
        stepping,
        k.two.request_cancel("order-1"),
    )
    log = await k.one.events("order-1")
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    kinds = [e.type.rsplit(".", 1)[1] for e in log]
    if step == "record_reserved":  # both pass: the cancel is recorded before or after
        assert (stepped, asked) == (True, True)
        assert sorted(kinds[1:]) == ["OrderCancelRequested", "OrderReserved"]
    else:  # one wins: the pivot refuses the cancel, or the cancel stops the pivot
        assert stepped is not asked, (stepped, asked)
        assert kinds[2:] == ["OrderCommitting" if stepped else "OrderCancelRequested"]
    saga = await k.one.saga("order-1")
    assert (
        history.check_order(log, await k.one.order("order-1"), saga.phase, saga.cancel_requested)
        == []
    )


async def test_no_lease_for_a_saga_finished_meanwhile(instances: OpenInstances) -> None:
    """The owner of a saga finishes it (CONFIRMED, its lease row gone) while another
    instance, seeing the lease expired, takes it over: the saga is final, so the other
    instance gets no lease, and none stays behind for the final saga."""
    k = await instances(OrderStore)
    old = Lease("order-1", "one", 1)
    await k.one.create("order-1", "alice", "req-1", ITEMS, lease=old, lease_seconds=0)
    await k.one.record_reserved(old, [LineItem("SKU-A", 1, 100, "USD")], "USD")
    await k.one.advance(old, Phase.RESERVED, Phase.AUTHORIZED)
    await k.one.advance(old, Phase.AUTHORIZED, Phase.COMMITTING)
    # The finish passes its fence and stops at the saga row; the takeover then starts.
    finished, taken = await k.in_turn(
        "SELECT 1 FROM sagas WHERE order_id = 'order-1' FOR UPDATE",
        k.one.finish(old, Phase.COMMITTING),
        k.two.acquire("order-1", "two", 30),
    )
    assert finished is True
    assert (await k.one.saga("order-1")).phase is Phase.CONFIRMED
    assert taken is None, f"a lease of a final saga: {taken!r}"
    assert await k.one.lease("order-1") is None, "no lease stays behind"


# Inventory.


async def test_last_unit_goes_to_one_order(instances: OpenInstances) -> None:
    """Two orders reserve the last unit at once on two instances: one holds it, the
    other is refused (OUT_OF_STOCK), and the counts add up."""
    k = await instances(InventoryStore)
    results = await k.at_once(
        "LOCK TABLE products IN EXCLUSIVE MODE",
        k.one.reserve("order-1", "alice", [Item("SKU-LAST", 1)], hold_seconds=60),
        k.two.reserve("order-2", "bob", [Item("SKU-LAST", 1)], hold_seconds=60),
    )
    assert sorted(reason(r) for r in results) == ["", "OUT_OF_STOCK"], f"one wins: {results}"
    product = await k.one.product("SKU-LAST")
    assert (product.available, product.held, product.sold) == (0, 1, 0)
    assert await k.value("SELECT count(*) FROM reservations") == 1, "the loser holds nothing"


@pytest.mark.parametrize("schedule", ["at_once", "first_between_skus"])
async def test_opposite_sku_orders_both_reserve(instances: OpenInstances, schedule: str) -> None:
    """Two orders reserve [A, B] and [B, A] at once on two instances; or [A, B, C] and
    [C, A], the first stopped between A and B (a third session holds B) when the second
    starts, which deadlocks for certain if SKUs are locked in the order listed. Both hold
    their stock, and the counts add up. No deadlock happens at all
    (DEADLOCKS_REACH_CALLERS: one would fail a call instead of being broken and retried)."""
    k = await instances(InventoryStore, **DEADLOCKS_REACH_CALLERS)
    if schedule == "at_once":
        first, second = ["SKU-A", "SKU-B"], ["SKU-B", "SKU-A"]
        results = await k.at_once(
            "LOCK TABLE products IN EXCLUSIVE MODE",
            k.one.reserve("order-1", "alice", [Item(s, 1) for s in first], hold_seconds=60),
            k.two.reserve("order-2", "bob", [Item(s, 1) for s in second], hold_seconds=60),
        )
    else:
        first, second = ["SKU-A", "SKU-B", "SKU-C"], ["SKU-C", "SKU-A"]
        results = await k.in_turn(
            "SELECT 1 FROM products WHERE sku = 'SKU-B' FOR UPDATE",
            k.one.reserve("order-1", "alice", [Item(s, 1) for s in first], hold_seconds=60),
            k.two.reserve("order-2", "bob", [Item(s, 1) for s in second], hold_seconds=60),
        )
    assert [getattr(r, "state", r) for r in results] == [ReservationState.HELD] * 2
    for sku in sorted(set(first + second)):
        held = (sku in first) + (sku in second)
        product = await k.one.product(sku)
        assert (product.available, product.held) == (10 - held, held), sku


async def test_commit_and_release_of_one_hold_move_it_once(
    instances: OpenInstances,
) -> None:
    """A commit (the saga past its pivot, on one instance) and a release (a compensation,
    on another) of the same hold at once: one of them takes effect, the other is refused,
    and the stock moves once."""
    k = await instances(InventoryStore)
    await k.one.reserve("order-1", "alice", [Item("SKU-A", 2)], hold_seconds=60)
    committed, released = await k.at_once(
        "SELECT 1 FROM reservations WHERE order_id = 'order-1' FOR UPDATE",
        k.one.commit("order-1", "alice"),
        k.two.release("order-1", "alice"),
    )
    product = await k.one.product("SKU-A")
    state = (await k.one.reservation("order-1")).state
    if state is ReservationState.COMMITTED:
        assert reason(released) == "RESERVATION_COMMITTED", f"the release: {released!r}"
        assert (product.available, product.held, product.sold) == (8, 0, 2)
    else:
        assert state is ReservationState.RELEASED
        assert reason(committed) == "RESERVATION_RELEASED", f"the commit: {committed!r}"
        assert (product.available, product.held, product.sold) == (10, 0, 0)


@pytest.mark.parametrize("schedule", ["at_once", "reserve_first"])
async def test_release_tombstone_stops_a_late_reserve(
    instances: OpenInstances, schedule: str
) -> None:
    """A release of an order with no hold yet (a compensation) and the order's reserve
    (late) at once, or the reserve a step ahead (its hold claimed, its stock not yet
    taken): whichever is first, the order ends released and holding nothing, and
    neither caller sees an error."""
    k = await instances(InventoryStore)
    release = k.one.release("order-1", "alice")
    reserve = k.two.reserve("order-1", "alice", [Item("SKU-A", 1)], hold_seconds=60)
    if schedule == "at_once":
        released, reserved = await k.at_once(
            "LOCK TABLE reservations IN EXCLUSIVE MODE", release, reserve
        )
    else:
        reserved, released = await k.in_turn(
            "LOCK TABLE products IN EXCLUSIVE MODE", reserve, release
        )
    assert not isinstance(released, Exception), f"the release: {released!r}"
    assert not isinstance(reserved, Exception), f"the reserve: {reserved!r}"
    assert (await k.one.reservation("order-1")).state is ReservationState.RELEASED
    product = await k.one.product("SKU-A")
    assert (product.available, product.held) == (10, 0), "nothing is held for the order"


async def test_repeated_reserve_holds_once(instances: OpenInstances) -> None:
    """One order's ReserveStock reaches two instances at once (the saga's retry on
    another host): the stock is held once, and both are answered that hold."""
    k = await instances(InventoryStore)
    first, second = await k.at_once(
        "LOCK TABLE products IN EXCLUSIVE MODE",
        k.one.reserve("order-1", "alice", [Item("SKU-A", 3)], hold_seconds=60),
        k.two.reserve("order-1", "alice", [Item("SKU-A", 3)], hold_seconds=60),
    )
    assert first == second, f"both answered the one hold: {first!r}, {second!r}"
    assert getattr(first, "state", None) is ReservationState.HELD
    product = await k.one.product("SKU-A")
    assert (product.available, product.held) == (7, 3), "held once"


@pytest.mark.parametrize("first", ["sweeper", "commit"])
async def test_expiry_sweeper_and_commit_move_a_hold_once(
    instances: OpenInstances, first: str
) -> None:
    """The expiry sweeper (on one instance, whose time is past the hold's expiry) and a
    commit of the hold (on another, just in time) at once. A sweeper first expires it and
    the commit is refused; a commit first is not waited for by the sweeper (it skips the
    hold the commit has locked) and sells it. The stock moves once."""
    k = await instances(InventoryStore)
    at = time.time()
    await k.one.reserve("order-1", "alice", [Item("SKU-LAST", 1)], hold_seconds=60, now=at)
    await k.hold("LOCK TABLE products IN EXCLUSIVE MODE")
    try:
        if first == "sweeper":
            sweep = asyncio.ensure_future(outcome(k.two.expire_due(now=at + 61)))
            await k.waiting(1, [sweep])
            commit = asyncio.ensure_future(outcome(k.one.commit("order-1", "alice", now=at + 30)))
            await k.waiting(2, [sweep, commit])
        else:
            commit = asyncio.ensure_future(outcome(k.one.commit("order-1", "alice", now=at + 30)))
            await k.waiting(1, [commit])
            try:
                swept = await asyncio.wait_for(
                    k.two.expire_due(now=at + 61), LOCK_WAIT_TIMEOUT_SECONDS
                )
            except TimeoutError:
                raise AssertionError("the sweeper waited for the commit's lock") from None
            assert swept == 0, "the sweeper skips the hold the commit is busy with"
    finally:
        await k.let_go()
    if first == "sweeper":
        # Both finished before the stock is read: the sweeper commits its give-back only
        # after the lock is let go, and a read before that would see the hold still held.
        assert await sweep == 1
        assert reason(await commit) == "RESERVATION_EXPIRED", "the commit is refused"
        product = await k.one.product("SKU-LAST")
        assert (product.available, product.held, product.sold) == (1, 0, 0)
    else:
        assert not isinstance(await commit, Exception)
        assert await k.two.expire_due(now=at + 61) == 0, "nothing is left to expire"
        product = await k.one.product("SKU-LAST")
        assert (product.available, product.held, product.sold) == (0, 0, 1)


async def test_commits_that_sweep_each_others_skus_do_not_deadlock(
    instances: OpenInstances,
) -> None:
    """Every write of the inventory store first sweeps the holds that are due, then
    moves its own stock. Two commits on two instances, of orders for SKU-B and SKU-A,
    each sweeping a due hold of the other SKU: the first has given SKU-A's expired unit
    back (its row locked) when the second gives SKU-B's back and then wants SKU-A; the
    first then wants SKU-B: a deadlock, when each write gave its sweep's stock back before
    moving its own. Now each makes both in one SKU-ordered pass, after its state changes,
    so the second waits for nothing of the first's. Both must be sold without a deadlock:
    the stores' retry of a 40P01 would hide one from the caller (at the cost of
    PostgreSQL's deadlock_timeout, 1 s by default), so here it reaches a caller
    (DEADLOCKS_REACH_CALLERS)."""
    k = await instances(InventoryStore, **DEADLOCKS_REACH_CALLERS)
    at = time.time()
    for order_id, sku, seconds in (("x", "SKU-A", 10), ("y", "SKU-B", 20)):
        await k.one.reserve(order_id, "bob", [Item(sku, 1)], hold_seconds=seconds, now=at)
    for order_id, sku in (("p", "SKU-B"), ("q", "SKU-A")):
        await k.one.reserve(order_id, "alice", [Item(sku, 1)], hold_seconds=100, now=at)
    # The first commit sweeps x (due at +10, not y yet) and stops at its own hold.
    await k.hold("SELECT 1 FROM reservations WHERE order_id = 'p' FOR UPDATE")
    try:
        first = asyncio.ensure_future(outcome(k.one.commit("p", "alice", now=at + 15)))
        await k.waiting(1, [first])
        # The second sweeps y (x is locked by the first: skipped), sells q's SKU-A.
        second = asyncio.ensure_future(outcome(k.two.commit("q", "alice", now=at + 25)))
        # It waits for nothing of the first's: the first has moved no stock (money) yet,
        # its sweep's moves wait for its own, in one ordered pass. (Sweep first, then its
        # own moves, the first held SKU-A's (bob's) row here, and the two deadlocked.)
        await asyncio.wait_for(asyncio.shield(second), LOCK_WAIT_TIMEOUT_SECONDS)
        assert not first.done(), "the first still waits for its own row"
    finally:
        await k.let_go()
    results = [await first, await second]
    assert [getattr(r, "state", r) for r in results] == [ReservationState.COMMITTED] * 2
    for sku in ("SKU-A", "SKU-B"):
        product = await k.one.product(sku)
        assert (product.available, product.held, product.sold) == (9, 0, 1), sku


# Payment.


async def test_capture_and_void_move_money_once(instances: OpenInstances) -> None:
    """A capture and a void of one authorization at once on two instances: one takes
    effect, the other is refused, and the money moves once."""
    k = await instances(PaymentStore)
    await k.one.authorize("order-1", "alice", 5_000, "USD", authorization_seconds=60)
    captured, voided = await k.at_once(
        "SELECT 1 FROM payments WHERE order_id = 'order-1' FOR UPDATE",
        k.one.capture("order-1", "alice"),
        k.two.void("order-1", "alice"),
    )
    account = await k.one.account("alice")
    state = (await k.one.payment("order-1")).state
    if state is PaymentState.CAPTURED:
        assert reason(voided) == "PAYMENT_ALREADY_CAPTURED", f"the void: {voided!r}"
        assert (account.available, account.held) == (95_000, 0)
    else:
        assert state is PaymentState.VOIDED
        assert isinstance(captured, ServiceError), f"the capture: {captured!r}"
        assert captured.kind is ErrorKind.FAILED_PRECONDITION
        assert (account.available, account.held) == (100_000, 0)
    assert await k.value("SELECT captured FROM accounts WHERE user_id = 'alice'") == (
        5_000 if state is PaymentState.CAPTURED else 0
    )


async def test_repeated_authorize_holds_once(instances: OpenInstances) -> None:
    """One order's AuthorizePayment reaches two instances at once: the money is held
    once, and both are answered that authorization."""
    k = await instances(PaymentStore)
    first, second = await k.at_once(
        "LOCK TABLE accounts IN EXCLUSIVE MODE",
        k.one.authorize("order-1", "alice", 5_000, "USD", authorization_seconds=60),
        k.two.authorize("order-1", "alice", 5_000, "USD", authorization_seconds=60),
    )
    assert first == second, f"both answered the one authorization: {first!r}, {second!r}"
    assert getattr(first, "state", None) is PaymentState.AUTHORIZED
    account = await k.one.account("alice")
    assert (account.available, account.held) == (95_000, 5_000), "held once"


@pytest.mark.parametrize("schedule", ["at_once", "authorize_first"])
async def test_void_tombstone_stops_a_late_authorize(
    instances: OpenInstances, schedule: str
) -> None:
    """A void of an order with no payment yet (a compensation) and the order's
    authorization (late) at once, or the authorization a step ahead (its payment
    claimed, the money not yet held): whichever is first, the payment ends VOIDED and
    no money stays held; the late authorization is refused if the void was first."""
    k = await instances(PaymentStore)
    void = k.one.void("order-1", "alice")
    authorize = k.two.authorize("order-1", "alice", 5_000, "USD", authorization_seconds=60)
    if schedule == "at_once":
        voided, authorized = await k.at_once(
            "LOCK TABLE payments IN EXCLUSIVE MODE", void, authorize
        )
    else:
        authorized, voided = await k.in_turn(
            "LOCK TABLE accounts IN EXCLUSIVE MODE", authorize, void
        )
    assert not isinstance(voided, Exception), f"the void: {voided!r}"
    if isinstance(authorized, Exception):
        assert isinstance(authorized, ServiceError), f"the authorization: {authorized!r}"
        assert authorized.kind is ErrorKind.FAILED_PRECONDITION
    assert (await k.one.payment("order-1")).state is PaymentState.VOIDED
    account = await k.one.account("alice")
    assert (account.available, account.held) == (100_000, 0), "nothing stays held"


@pytest.mark.parametrize("first", ["sweeper", "capture"])
async def test_payment_sweeper_and_capture_move_money_once(
    instances: OpenInstances, first: str
) -> None:
    """The authorization sweeper (past the expiry) and a capture (just in time) of one
    authorization at once on two instances. A sweeper first gives the money back and the
    capture is refused; a capture first is not waited for by the sweeper (it skips the
    payment the capture has locked) and takes the money. The money moves once."""
    k = await instances(PaymentStore)
    at = time.time()
    await k.one.authorize("order-1", "alice", 5_000, "USD", now=at, authorization_seconds=60)
    await k.hold("LOCK TABLE accounts IN EXCLUSIVE MODE")
    try:
        if first == "sweeper":
            sweep = asyncio.ensure_future(outcome(k.two.expire_due(now=at + 61)))
            await k.waiting(1, [sweep])
            capture = asyncio.ensure_future(outcome(k.one.capture("order-1", "alice", now=at + 30)))
            await k.waiting(2, [sweep, capture])
        else:
            capture = asyncio.ensure_future(outcome(k.one.capture("order-1", "alice", now=at + 30)))
            await k.waiting(1, [capture])
            try:
                swept = await asyncio.wait_for(
                    k.two.expire_due(now=at + 61), LOCK_WAIT_TIMEOUT_SECONDS
                )
            except TimeoutError:
                raise AssertionError("the sweeper waited for the capture's lock") from None
            assert swept == 0, "the sweeper skips the payment the capture is busy with"
    finally:
        await k.let_go()
    if first == "sweeper":
        assert await sweep == 1
        captured = await capture
        assert isinstance(captured, ServiceError), f"the capture: {captured!r}"
        assert captured.kind is ErrorKind.FAILED_PRECONDITION
        assert (await k.one.payment("order-1")).state is PaymentState.EXPIRED
        money = (100_000, 0, 0)
    else:
        assert not isinstance(await capture, Exception)
        assert await k.two.expire_due(now=at + 61) == 0, "nothing is left to expire"
        money = (95_000, 0, 5_000)
    account = "SELECT available, held, captured FROM accounts WHERE user_id = 'alice'"
    assert tuple(await k.observer.fetchrow(account) or ()) == money


async def test_captures_that_sweep_each_others_accounts_do_not_deadlock(
    instances: OpenInstances,
) -> None:
    """The payment store's writes sweep due authorizations first too. Two captures on
    two instances, of alice's and of bob's order, each sweeping a due authorization of
    the other user: the first has given bob's expired money back (his account row
    locked) when the second gives alice's back and then wants bob's account; the first
    then wants alice's: a deadlock, when each write gave its sweep's money back before
    moving its own. Now each makes both in one user-ordered pass. Both must be captured
    without a deadlock (here one reaches a caller: DEADLOCKS_REACH_CALLERS)."""
    k = await instances(PaymentStore, **DEADLOCKS_REACH_CALLERS)
    at = time.time()
    for order_id, user, seconds in (("x", "bob", 10), ("y", "alice", 20)):
        await k.one.authorize(order_id, user, 1_000, "USD", now=at, authorization_seconds=seconds)
    for order_id, user in (("p", "alice"), ("q", "bob")):
        await k.one.authorize(order_id, user, 1_000, "USD", now=at, authorization_seconds=100)
    # The first capture sweeps x (due at +10, not y yet) and stops at its own payment.
    await k.hold("SELECT 1 FROM payments WHERE order_id = 'p' FOR UPDATE")
    try:
        first = asyncio.ensure_future(outcome(k.one.capture("p", "alice", now=at + 15)))
        await k.waiting(1, [first])
        # The second sweeps y (x is locked by the first: skipped), captures q from bob.
        second = asyncio.ensure_future(outcome(k.two.capture("q", "bob", now=at + 25)))
        # It waits for nothing of the first's: the first has moved no stock (money) yet,
        # its sweep's moves wait for its own, in one ordered pass. (Sweep first, then its
        # own moves, the first held SKU-A's (bob's) row here, and the two deadlocked.)
        await asyncio.wait_for(asyncio.shield(second), LOCK_WAIT_TIMEOUT_SECONDS)
        assert not first.done(), "the first still waits for its own row"
    finally:
        await k.let_go()
    results = [await first, await second]
    assert [getattr(r, "state", r) for r in results] == [PaymentState.CAPTURED] * 2
    for user in ("alice", "bob"):
        account = await k.one.account(user)
        assert (account.available, account.held) == (99_000, 0), user
