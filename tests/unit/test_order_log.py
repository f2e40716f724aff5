"""The order's event log on the session's backend: each saga transition appends its fact
in the same write (a transition rolled back leaves no entry), the sequence has no gaps
whenever another instance takes a user's cancel, only the owner reads it, prune deletes it, and
the rebuild (services.order.history) replays it to the order's row and names a row that
changed without its fact. Starts no process."""

from __future__ import annotations

import uuid

import pytest

from services.common.errors import ErrorKind, ServiceError
from services.order import history
from services.order.domain import (
    CANCELLED_BY_USER,
    Lease,
    LeaseLost,
    LineItem,
    OrderState,
    Phase,
    cancelled_by_user,
)
from services.order.store import OrderStore
from shop.order.v1 import order_events_pb2 as facts
from tests.stores import StoreOpener, before_each_statement, rows

T = 1_800_000_000.0  # 2027: a time as the database's clock gives it
ITEMS = (LineItem("SKU-TEA", 2), LineItem("SKU-MUG", 1))
PRICED = (LineItem("SKU-TEA", 2, 450, "USD"), LineItem("SKU-MUG", 1, 1299, "USD"))
CONFIRMED = [
    "shop.order.v1.OrderPlaced",
    "shop.order.v1.OrderReserved",
    "shop.order.v1.OrderCommitting",
    "shop.order.v1.OrderConfirmed",
]


class Boom(Exception):
    """A fault injected into one statement of a write."""


async def confirmed(store: OrderStore, order_id: str = "o1", user_id: str = "alice") -> Lease:
    """An order taken through the saga's transitions to CONFIRMED, one second apart."""
    lease = Lease(order_id, "me", 1)
    await store.create(order_id, user_id, f"r-{order_id}", ITEMS, T, lease=lease, lease_seconds=600)
    assert await store.record_reserved(lease, PRICED, "USD", T + 1)
    assert await store.advance(lease, Phase.RESERVED, Phase.COMMITTING, T + 2)
    assert await store.finish(lease, Phase.COMMITTING, T + 3)
    return lease


async def test_each_logged_event_is_also_in_the_outbox_byte_for_byte(
    open_store: StoreOpener,
) -> None:
    store = await open_store(OrderStore)
    await confirmed(store)
    log = [e.SerializeToString() for e in await store.events("o1")]
    queued = await rows(
        store,
        "SELECT sequence, subject, envelope FROM outbox WHERE aggregate_id = 'o1' ORDER BY rowid",
    )
    assert [bytes(envelope) for _, _, envelope in queued] == log  # type: ignore[call-overload]
    assert [(sequence, subject) for sequence, subject, _ in queued] == list(
        zip(range(1, 5), CONFIRMED, strict=True)
    )


async def test_with_events_off_the_log_is_kept_and_the_outbox_stays_empty(
    open_store: StoreOpener,
) -> None:
    store = await open_store(OrderStore)
    store.events_enabled = False  # StoreConfig.events, as `Store.open` sets it
    await confirmed(store)
    assert [e.type for e in await store.events("o1")] == CONFIRMED
    assert [e.sequence for e in await store.events("o1")] == [1, 2, 3, 4]
    assert await rows(store, "SELECT event_id FROM outbox") == []
    assert (await store.outbox.backlog()).pending == 0


async def replayed(store: OrderStore, order_id: str) -> list[str]:
    """What the rebuild finds wrong with the order: nothing if its log replays to it."""
    saga = await store.saga(order_id)
    return history.check_order(
        await store.events(order_id), await store.order(order_id), saga.phase, saga.cancel_requested
    )


async def test_each_transition_appends_its_fact_in_its_envelope(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    await confirmed(store)
    log = await store.events("o1")
    assert [e.type for e in log] == CONFIRMED
    assert [e.sequence for e in log] == [1, 2, 3, 4]
    assert {e.aggregate_id for e in log} == {"o1"}
    assert {e.request_id for e in log} == {"r-o1"}
    assert {e.traceparent for e in log} == {""}
    assert len({uuid.UUID(e.event_id, version=4) for e in log}) == 4
    # The transition's own database time, to the nanosecond.
    assert [(e.occurred_at.seconds, e.occurred_at.nanos) for e in log] == [
        (int(T) + n, 0) for n in range(4)
    ]
    placed = facts.OrderPlaced.FromString(log[0].payload)
    assert (placed.user_id, [(i.sku, i.quantity) for i in placed.line_items]) == (
        "alice",
        [("SKU-TEA", 2), ("SKU-MUG", 1)],
    )
    assert not placed.line_items[0].HasField("unit_price")
    reserved = facts.OrderReserved.FromString(log[1].payload)
    assert (reserved.total.amount_minor, reserved.total.currency_code) == (2199, "USD")
    assert [i.unit_price.amount_minor for i in reserved.line_items] == [450, 1299]
    done = facts.OrderConfirmed.FromString(log[3].payload)
    assert (done.user_id, done.total.amount_minor) == ("alice", 2199)
    assert [(i.sku, i.unit_price.amount_minor) for i in done.line_items] == [
        ("SKU-TEA", 450),
        ("SKU-MUG", 1299),
    ]
    assert await replayed(store, "o1") == []
    rebuilt = history.replay(log).order
    assert (rebuilt.created_at, rebuilt.updated_at, rebuilt.state) == (
        T,
        T + 3,
        OrderState.CONFIRMED,
    )


async def test_a_cancel_while_authorizing_is_logged_once_and_replays(
    open_store: StoreOpener,
) -> None:
    store = await open_store(OrderStore)
    lease = Lease("o1", "me", 1)
    await store.create("o1", "alice", "r1", ITEMS, T, lease=lease, lease_seconds=600)
    assert await store.record_reserved(lease, PRICED, "USD", T + 1)
    assert await store.request_cancel("o1", T + 2)
    assert await store.request_cancel("o1", T + 3)  # asked again: still asked, not logged again
    assert not await store.advance(lease, Phase.RESERVED, Phase.COMMITTING, T + 4)
    assert await store.advance(lease, Phase.RESERVED, Phase.AUTHORIZED, T + 4)
    assert await store.begin_compensation(lease, Phase.AUTHORIZED, cancelled_by_user(), T + 5)
    assert await store.finish(lease, Phase.COMPENSATING, T + 6)
    assert not await store.request_cancel("o1", T + 7)  # final: nothing to ask, nothing logged
    log = await store.events("o1")
    assert [e.type.rsplit(".", 1)[1] for e in log] == [
        "OrderPlaced",
        "OrderReserved",
        "OrderCancelRequested",
        "OrderPaymentAuthorized",
        "OrderCompensating",
        "OrderCancelled",
    ]
    assert [e.sequence for e in log] == list(range(1, 7))
    assert facts.OrderCompensating.FromString(log[4].payload).cancel_reason == CANCELLED_BY_USER
    cancelled = facts.OrderCancelled.FromString(log[5].payload)
    assert (cancelled.cancel_reason, cancelled.total.amount_minor) == (CANCELLED_BY_USER, 2199)
    assert await replayed(store, "o1") == []


async def test_an_order_cancelled_before_its_prices_has_no_total_in_its_log(
    open_store: StoreOpener,
) -> None:
    store = await open_store(OrderStore)
    lease = Lease("o1", "me", 1)
    await store.create("o1", "alice", "r1", ITEMS, T, lease=lease, lease_seconds=600)
    failure = ServiceError(ErrorKind.FAILED_PRECONDITION, "OUT_OF_STOCK", "none left")
    assert await store.begin_compensation(lease, Phase.STARTED, failure, T + 1)
    assert await store.finish(lease, Phase.COMPENSATING, T + 2)
    log = await store.events("o1")
    cancelled = facts.OrderCancelled.FromString(log[-1].payload)
    assert (cancelled.cancel_reason, cancelled.HasField("total")) == ("OUT_OF_STOCK", False)
    assert await replayed(store, "o1") == []


@pytest.mark.parametrize("step", ["create", "record_reserved", "finish"])
async def test_a_transition_that_rolls_back_leaves_no_entry(
    open_store: StoreOpener, step: str
) -> None:
    """The entry is written inside the transition's own write: a fault in that write
    after the entry (create reads the order back last) or in the entry's own statement
    takes both back."""
    store = await open_store(OrderStore)
    lease = Lease("o1", "me", 1)
    if step != "create":
        await store.create("o1", "alice", "r1", ITEMS, T, lease=lease, lease_seconds=600)
    if step == "finish":
        assert await store.record_reserved(lease, PRICED, "USD", T + 1)
        assert await store.advance(lease, Phase.RESERVED, Phase.COMMITTING, T + 2)
    before = await store.events("o1") if step != "create" else []
    armed = {"on": True, "appended": False}

    async def fault(sql: str, params: tuple[object, ...]) -> None:
        if not armed["on"]:
            return
        appending = sql.startswith("INSERT INTO order_events")
        if step == "create" and armed["appended"]:
            raise Boom(sql)  # the statement after the entry
        armed["appended"] |= appending
        if appending and step != "create":
            raise Boom(sql)

    before_each_statement(store, fault)
    with pytest.raises(Boom):
        if step == "create":
            await store.create("o1", "alice", "r1", ITEMS, T, lease=lease, lease_seconds=600)
        elif step == "record_reserved":
            await store.record_reserved(lease, PRICED, "USD", T + 1)
        else:
            await store.finish(lease, Phase.COMMITTING, T + 3)
    armed["on"] = False
    if step == "create":
        assert await rows(store, "SELECT * FROM orders") == []
        assert await rows(store, "SELECT * FROM order_events") == []
        return
    assert await store.events("o1") == before
    saga, order = await store.saga_and_order("o1")
    expected = (Phase.STARTED, None) if step == "record_reserved" else (Phase.COMMITTING, 2199)
    assert (saga.phase, order.total_minor) == expected
    assert order.state is OrderState.PENDING
    assert await replayed(store, "o1") == []


async def test_a_write_under_a_lost_lease_appends_nothing(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    first = Lease("o1", "a", 1)
    await store.create("o1", "alice", "r1", ITEMS, T, lease=first, lease_seconds=10)
    assert await store.acquire("o1", "b", 10, now=T + 20) == Lease("o1", "b", 2)
    with pytest.raises(LeaseLost):
        await store.record_reserved(first, PRICED, "USD", T + 21)
    assert [e.type for e in await store.events("o1")] == CONFIRMED[:1]


@pytest.mark.parametrize(
    ("after", "outcome"),
    [
        ("create", "OrderCancelled"),
        ("record_reserved", "OrderCancelled"),
        ("advance", "OrderConfirmed"),  # past the pivot: the cancel is refused, not logged
        ("finish", "OrderConfirmed"),
    ],
)
async def test_a_cancel_from_another_instance_at_each_step_keeps_the_log_whole(
    open_store: StoreOpener, after: str, outcome: str
) -> None:
    """One instance drives the saga as the saga does, the other takes the user's cancel
    after the step `after`: the log has no gap, one OrderCancelRequested at most, ends
    as the order does and replays to it. (test_store_races.py makes a cancel and a step
    meet on PostgreSQL.)"""
    driver, canceller = await open_store(OrderStore), await open_store(OrderStore)
    lease = Lease("o1", "me", 1)
    asked: list[bool] = []

    async def step_done(name: str) -> None:
        if name == after:
            asked.append(await canceller.request_cancel("o1", T + 1))

    await driver.create("o1", "alice", "r1", ITEMS, T, lease=lease, lease_seconds=600)
    await step_done("create")
    assert await driver.record_reserved(lease, PRICED, "USD", T + 1)
    await step_done("record_reserved")
    if await driver.advance(lease, Phase.RESERVED, Phase.COMMITTING, T + 2):
        await step_done("advance")
        assert await driver.finish(lease, Phase.COMMITTING, T + 3)
    else:  # a cancel came first: authorized, then compensated
        assert await driver.advance(lease, Phase.RESERVED, Phase.AUTHORIZED, T + 2)
        assert await driver.begin_compensation(lease, Phase.AUTHORIZED, cancelled_by_user(), T + 3)
        assert await driver.finish(lease, Phase.COMPENSATING, T + 4)
    await step_done("finish")
    assert asked == [outcome == "OrderCancelled"]
    log = await driver.events("o1")
    kinds = [e.type.rsplit(".", 1)[1] for e in log]
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    assert kinds[-1] == outcome
    assert kinds.count("OrderCancelRequested") == asked.count(True)
    assert await replayed(driver, "o1") == []


async def test_only_the_owner_reads_the_log_a_page_at_a_time(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    await confirmed(store)
    for order_id, user_id in (("o1", "bob"), ("nope", "alice")):
        with pytest.raises(ServiceError) as caught:
            await store.events(order_id, user_id)
        assert (caught.value.kind, caught.value.reason) == (ErrorKind.NOT_FOUND, "ORDER_NOT_FOUND")
    page = await store.events("o1", "alice", after=1, limit=2)
    assert [e.sequence for e in page] == [2, 3]
    assert await store.events("o1", "alice", after=4) == []  # past the end: no error


async def test_prune_deletes_the_log_with_the_order(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    await confirmed(store, "kept")
    lease = Lease("gone", "me", 1)
    await store.create("gone", "alice", "r-gone", ITEMS, T, lease=lease, lease_seconds=600)
    failure = ServiceError(ErrorKind.FAILED_PRECONDITION, "OUT_OF_STOCK", "none left")
    await store.begin_compensation(lease, Phase.STARTED, failure, T + 1)
    await store.finish(lease, Phase.COMPENSATING, T + 2)
    assert await store.prune(60.0, now=T + 100) == 1
    left = await rows(store, "SELECT DISTINCT order_id FROM order_events")
    assert left == [("kept",)]


async def test_the_rebuild_names_a_row_changed_without_its_fact(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    await confirmed(store)
    await store.db.write(lambda tx: tx.execute("UPDATE orders SET total_minor = 1"))
    assert await replayed(store, "o1") == ["order o1: total_minor is 1 in the row, 2199 by the log"]
    await store.db.write(lambda tx: tx.execute("UPDATE orders SET total_minor = 2199"))
    await store.db.write(
        lambda tx: tx.execute("UPDATE sagas SET phase = 'COMPENSATING', cancel_requested = 1")
    )
    assert await replayed(store, "o1") == [
        "order o1: the saga is COMPENSATING, CONFIRMED by the log",
        "order o1: the saga's cancel request is True, False by the log",
    ]
    await store.db.write(lambda tx: tx.execute("DELETE FROM order_events WHERE sequence = 2"))
    assert await replayed(store, "o1") == ["order o1: its log is broken: entry 2 has sequence 3"]
