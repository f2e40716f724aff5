"""A user's quota (open orders, recent declines) and the retention of cancelled orders, in
the order store, on the session's backend."""

from __future__ import annotations

import pytest

from services.common.errors import ErrorKind, ServiceError
from services.order.domain import Lease, LineItem, Phase, Quota
from services.order.store import OrderStore
from tests.stores import StoreOpener, query_plan, record_statements, rows

ITEMS = (LineItem("SKU-TEA", 1),)
QUOTA = Quota(max_open_orders=3, max_declines=2, decline_window_seconds=100.0)


async def place(store: OrderStore, n: int, user: str = "alice", now: float = 200.0) -> bool:
    _, created = await store.create(
        f"o{n}-{user}",
        user,
        f"r{n}",
        ITEMS,
        now,
        lease=Lease(f"o{n}-{user}", "test", 1),
        lease_seconds=60,
        quota=QUOTA,
    )
    return created


async def cancel(store: OrderStore, n: int, reason: str, now: float, user: str = "alice") -> None:
    lease = Lease(f"o{n}-{user}", "test", 1)
    failure = ServiceError(ErrorKind.FAILED_PRECONDITION, reason, reason.lower())
    assert await store.begin_compensation(lease, Phase.STARTED, failure, now)
    assert await store.finish(lease, Phase.COMPENSATING, now)


async def test_a_user_may_have_only_so_many_open_orders(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    assert await place(store, 1) and await place(store, 2) and await place(store, 3)
    with pytest.raises(ServiceError) as refused:
        await place(store, 4)
    assert (refused.value.kind, refused.value.reason) == (
        ErrorKind.RESOURCE_EXHAUSTED,
        "TOO_MANY_OPEN_ORDERS",
    )
    assert not await place(store, 1)  # a repeat is answered, quota or not
    assert await place(store, 1, user="bob")  # another user's quota is their own
    await cancel(store, 1, "OUT_OF_STOCK", 150.0)  # one ends: room for one more
    assert await place(store, 4)
    assert len(await store.orders("alice", None, 10)) == 4


async def test_a_user_whose_orders_keep_being_declined_is_refused_for_a_while(
    open_store: StoreOpener,
) -> None:
    store = await open_store(OrderStore)
    for n in (1, 2, 3):
        assert await place(store, n)
    await cancel(store, 1, "INSUFFICIENT_FUNDS", 90.0)  # before the window: not counted
    await cancel(store, 2, "INSUFFICIENT_FUNDS", 120.0)
    await cancel(store, 3, "OUT_OF_STOCK", 130.0)  # not a decline
    assert await place(store, 4)
    await cancel(store, 4, "ACCOUNT_NOT_FOUND", 140.0)  # the second decline in the window
    with pytest.raises(ServiceError) as refused:
        await place(store, 5)
    assert refused.value.reason == "TOO_MANY_DECLINED_ORDERS"
    # Refused until the oldest decline counted (at 120) leaves the window (since 100).
    assert refused.value.metadata["retry_after_seconds"] == "20"
    assert await place(store, 5, user="bob")


async def test_the_quota_is_counted_through_small_indexes(open_store: StoreOpener) -> None:
    """Every CreateOrder counts them: walking the user's whole history would not do."""
    store = await open_store(OrderStore)
    statements = record_statements(store)
    await place(store, 1)
    counts = [(sql, params) for sql, params in statements if "COUNT(*)" in sql]
    assert len(counts) == 2, statements
    plans = [await query_plan(store, open_store.backend, *count) for count in counts]
    assert "orders_pending" in plans[0] and "orders_declined" in plans[1], plans


async def test_cancelled_orders_past_the_retention_time_are_pruned_and_forgotten(
    open_store: StoreOpener,
) -> None:
    store = await open_store(OrderStore)
    for n in (1, 2, 3):
        assert await place(store, n, now=50.0)
    await cancel(store, 1, "OUT_OF_STOCK", 60.0)
    await cancel(store, 2, "OUT_OF_STOCK", 160.0)  # within the retention time
    lease = Lease("o3-alice", "test", 1)
    await store.advance(lease, Phase.STARTED, Phase.COMMITTING, 60.0)
    await store.finish(lease, Phase.COMMITTING, 60.0)  # CONFIRMED: kept for good

    # A retention of 40 s at 140: what ended before 100 goes.
    assert await store.prunable(40.0, now=140.0)
    assert await store.prune(40.0, now=140.0) == 1
    assert not await store.prunable(40.0, now=140.0)
    assert [o.order_id for o in await store.orders("alice", None, 10)] == ["o3-alice", "o2-alice"]
    for table in ("orders", "order_items", "sagas", "saga_leases", "parked_sagas"):
        left = await rows(store, f"SELECT COUNT(*) FROM {table} WHERE order_id = 'o1-alice'")
        assert left == [(0,)], table
    # Its request id is forgotten: the same one places a new order now (under a new order
    # id, as the service gives every order; the outbox still holds the old one's events
    # until the relay's retention drops them once sent).
    _, created = await store.create(
        "o1-again", "alice", "r1", ITEMS, 300.0, lease=Lease("o1-again", "test", 1), quota=QUOTA
    )
    assert created
