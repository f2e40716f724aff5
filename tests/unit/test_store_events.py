"""Inventory's and payment's facts: each stock or money move appends its event to the
service's outbox in the same write, with the contract's subject and aggregate, and a
refused or repeated call appends none. On either backend (`open_store`)."""

from __future__ import annotations

import pathlib
from typing import cast

import pytest

from services.common import events
from services.common.errors import ServiceError
from services.inventory.domain import Item
from services.inventory.store import InventoryStore
from services.payment.store import PaymentStore
from shop.events.v1 import envelope_pb2
from shop.inventory.v1 import inventory_events_pb2 as inv
from shop.payment.v1 import payment_events_pb2 as pay
from tests.stores import StoreOpener, rows

HOLD = 60.0


async def outbox(store: InventoryStore | PaymentStore) -> list[envelope_pb2.EventEnvelope]:
    """The store's outbox, oldest first, each row's envelope checked against its columns."""
    found = []
    for event_id, aggregate_id, sequence, subject, data in await rows(
        store,
        "SELECT event_id, aggregate_id, sequence, subject, envelope FROM outbox ORDER BY rowid",
    ):
        envelope = envelope_pb2.EventEnvelope.FromString(bytes(cast(bytes, data)))
        assert (envelope.event_id, envelope.aggregate_id, envelope.sequence) == (
            event_id,
            aggregate_id,
            sequence,
        )
        assert envelope.type == subject
        found.append(envelope)
    return found


def types(envelopes: list[envelope_pb2.EventEnvelope]) -> list[str]:
    return [e.type.rsplit(".", 1)[1] for e in envelopes]


async def test_a_hold_committed_appends_reserved_then_committed_with_prices(
    open_store: StoreOpener, seed_file: pathlib.Path
) -> None:
    store = await open_store(InventoryStore)
    await store.seed(seed_file)
    await store.reserve("o1", "alice", [Item("SKU-MUG", 2), Item("SKU-TEA", 1)], HOLD)
    await store.reserve("o1", "alice", [Item("SKU-MUG", 2), Item("SKU-TEA", 1)], HOLD)  # repeat
    await store.commit("o1", "alice")
    await store.commit("o1", "alice")  # repeat
    log = await outbox(store)
    assert types(log) == ["StockReserved", "StockCommitted"]
    assert [(e.aggregate_id, e.sequence) for e in log] == [("o1", 1), ("o1", 2)]
    reserved = inv.StockReserved.FromString(log[0].payload)
    assert reserved.user_id == "alice"
    assert [(i.sku, i.quantity, i.unit_price.amount_minor) for i in reserved.items] == [
        ("SKU-MUG", 2, 1299),
        ("SKU-TEA", 1, 450),
    ]
    committed = inv.StockCommitted.FromString(log[1].payload)
    assert [(i.sku, i.quantity) for i in committed.items] == [("SKU-MUG", 2), ("SKU-TEA", 1)]
    assert log[1].occurred_at.ToNanoseconds() >= log[0].occurred_at.ToNanoseconds()


async def test_a_refused_hold_appends_nothing_and_a_release_appends_released(
    open_store: StoreOpener, seed_file: pathlib.Path
) -> None:
    store = await open_store(InventoryStore)
    await store.seed(seed_file)
    with pytest.raises(ServiceError):
        await store.reserve("o1", "alice", [Item("SKU-LAST", 2)], HOLD)  # only 1 in stock
    assert await outbox(store) == []
    await store.reserve("o2", "alice", [Item("SKU-LAST", 1)], HOLD)
    await store.release("o2", "alice")
    await store.release("o2", "alice")  # repeat
    await store.release("never-held", "alice")  # a tombstone moves nothing
    log = await outbox(store)
    assert types(log) == ["StockReserved", "StockReleased"]
    released = inv.StockReleased.FromString(log[1].payload)
    assert (released.order_id, released.expired) == ("o2", False)
    assert [(i.sku, i.quantity) for i in released.items] == [("SKU-LAST", 1)]


async def test_an_expired_hold_appends_released_as_expired_once(
    open_store: StoreOpener, seed_file: pathlib.Path
) -> None:
    store = await open_store(InventoryStore)
    await store.seed(seed_file)
    await store.reserve("o1", "bob", [Item("SKU-MUG", 3)], HOLD, now=1000.0)
    assert await store.expire_due(now=1000.0 + HOLD + 1) == 1
    assert await store.expire_due(now=1000.0 + HOLD + 2) == 0
    log = await outbox(store)
    assert types(log) == ["StockReserved", "StockReleased"]
    released = inv.StockReleased.FromString(log[1].payload)
    assert (released.order_id, released.user_id, released.expired) == ("o1", "bob", True)
    assert [(i.sku, i.quantity) for i in released.items] == [("SKU-MUG", 3)]


async def test_a_restock_appends_restocked_per_sku_once_per_request_id(
    open_store: StoreOpener, seed_file: pathlib.Path
) -> None:
    store = await open_store(InventoryStore)
    await store.seed(seed_file)
    await store.restock("SKU-MUG", 5, "r1")
    await store.restock("SKU-MUG", 5, "r1")  # repeat
    await store.restock("SKU-MUG", 1, "r2")
    log = await outbox(store)
    assert types(log) == ["StockRestocked", "StockRestocked"]
    assert [(e.aggregate_id, e.sequence) for e in log] == [("SKU-MUG", 1), ("SKU-MUG", 2)]
    first = inv.StockRestocked.FromString(log[0].payload)
    assert (first.sku, first.quantity, first.available_quantity) == ("SKU-MUG", 5, 30)


async def test_money_held_then_captured_appends_authorized_then_captured(
    open_store: StoreOpener, seed_file: pathlib.Path
) -> None:
    store = await open_store(PaymentStore)
    await store.seed(seed_file)
    await store.authorize("o1", "alice", 2500, "USD", authorization_seconds=HOLD)
    await store.authorize("o1", "alice", 2500, "USD", authorization_seconds=HOLD)  # repeat
    await store.capture("o1", "alice")
    await store.capture("o1", "alice")  # repeat
    log = await outbox(store)
    assert types(log) == ["PaymentAuthorized", "PaymentCaptured"]
    assert [(e.aggregate_id, e.sequence) for e in log] == [("o1", 1), ("o1", 2)]
    authorized = pay.PaymentAuthorized.FromString(log[0].payload)
    assert (authorized.user_id, authorized.amount.amount_minor) == ("alice", 2500)
    assert authorized.expire_time.ToNanoseconds() > log[0].occurred_at.ToNanoseconds()
    captured = pay.PaymentCaptured.FromString(log[1].payload)
    assert (captured.amount.amount_minor, captured.amount.currency_code) == (2500, "USD")


async def test_a_decline_appends_nothing_a_void_and_an_expiry_append_voided(
    open_store: StoreOpener, seed_file: pathlib.Path
) -> None:
    store = await open_store(PaymentStore)
    await store.seed(seed_file)
    with pytest.raises(ServiceError):
        await store.authorize("o1", "carol", 100, "USD", authorization_seconds=HOLD)
    assert await outbox(store) == []
    await store.authorize("o2", "alice", 700, "USD", authorization_seconds=HOLD)
    await store.void("o2", "alice")
    await store.void("o2", "alice")  # repeat
    await store.void("never-held", "alice")  # a tombstone moves nothing
    await store.authorize("o3", "bob", 300, "USD", authorization_seconds=HOLD, now=1000.0)
    assert await store.expire_due(now=1000.0 + HOLD + 1) == 1
    log = await outbox(store)
    assert types(log) == [
        "PaymentAuthorized",
        "PaymentVoided",
        "PaymentAuthorized",
        "PaymentVoided",
    ]
    voided = pay.PaymentVoided.FromString(log[1].payload)
    assert (voided.order_id, voided.amount.amount_minor, voided.expired) == ("o2", 700, False)
    expired = pay.PaymentVoided.FromString(log[3].payload)
    assert (expired.order_id, expired.user_id, expired.expired) == ("o3", "bob", True)
    assert expired.amount.amount_minor == 300


def test_every_fact_names_its_subject_and_aggregate_from_the_contract() -> None:
    fact = inv.StockRestocked(sku="SKU-MUG", quantity=1)
    assert events.subject(fact) == "shop.inventory.v1.StockRestocked"
    assert events.aggregate_id(fact) == "SKU-MUG"
    with pytest.raises(TypeError, match="not an event"):
        events.spec(envelope_pb2.EventEnvelope())


async def test_with_events_off_stock_and_money_moves_append_nothing(
    open_store: StoreOpener, seed_file: pathlib.Path
) -> None:
    stock = await open_store(InventoryStore)
    money = await open_store(PaymentStore)
    stock.events_enabled = money.events_enabled = False  # StoreConfig.events
    await stock.seed(seed_file)
    sold = (await stock.product("SKU-TEA")).sold
    await stock.reserve("o1", "alice", [Item("SKU-TEA", 1)], HOLD)
    await stock.commit("o1", "alice")
    assert (await stock.product("SKU-TEA")).sold == sold + 1  # the moves themselves happen
    await money.seed(seed_file)
    await money.authorize("o1", "alice", 450, "USD", authorization_seconds=HOLD)
    assert (await money.capture("o1", "alice")).state.value == "CAPTURED"
    assert await outbox(stock) == [] and await outbox(money) == []
    assert await rows(stock, "SELECT * FROM outbox_sequences") == []
