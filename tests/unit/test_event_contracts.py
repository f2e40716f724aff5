"""The event contracts: every fact message is an event with an EventSpec, each carries
what its consumers need, the generated code packs it into the envelope, and
docs/events.md is what the catalogue tool generates. Starts no process."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from services.order import events as order_log
from shop.events.v1 import envelope_pb2, options_pb2
from shop.inventory.v1 import inventory_events_pb2, inventory_pb2
from shop.money.v1 import money_pb2
from shop.order.v1 import order_events_pb2, order_pb2, order_service_pb2
from shop.payment.v1 import payment_events_pb2
from shopmesh.event_catalogue import CONSUMERS, Event, events, render
from shopmesh.tools import REPO

PAGE = REPO / "docs" / "events.md"
DESCRIPTOR_SET = REPO / "gen" / "descriptor.binpb"
PUBLISHED_FACTS = {
    "shop.order.v1.OrderPlaced",
    "shop.order.v1.OrderConfirmed",
    "shop.order.v1.OrderCancelled",
    "shop.inventory.v1.StockReserved",
    "shop.inventory.v1.StockReleased",
    "shop.inventory.v1.StockCommitted",
    "shop.inventory.v1.StockRestocked",
    "shop.payment.v1.PaymentAuthorized",
    "shop.payment.v1.PaymentCaptured",
    "shop.payment.v1.PaymentVoided",
}
"""The ten facts issue 12 names."""
# The order saga's intermediate transitions, each a fact of the order's event log
# (services/order/store.py appends one per transition).
SAGA_FACTS = {
    "shop.order.v1.OrderReserved",
    "shop.order.v1.OrderPaymentAuthorized",
    "shop.order.v1.OrderCommitting",
    "shop.order.v1.OrderCancelRequested",
    "shop.order.v1.OrderCompensating",
}
FACTS = PUBLISHED_FACTS | SAGA_FACTS
FACT_MODULES = (order_events_pb2, inventory_events_pb2, payment_events_pb2)
# Any: the generated .pyi types an extension as a plain FieldDescriptor, which the
# protobuf stubs do not take as an extension.
EVENT: Any = options_pb2.event


@pytest.fixture(scope="module")
def declared() -> dict[str, Event]:
    return {event.type: event for event in events(DESCRIPTOR_SET.read_bytes())}


def fact_messages() -> list[type[Message]]:
    """Every message of the *_events.proto files, as generated."""
    return [
        getattr(module, name)
        for module in FACT_MODULES
        for name in module.DESCRIPTOR.message_types_by_name
    ]


def test_the_catalogue_is_generated_from_the_current_descriptor_set() -> None:
    assert render(DESCRIPTOR_SET.read_bytes()) == PAGE.read_text()


def test_every_fact_message_has_an_event_spec_and_no_other_message_has_one(
    declared: dict[str, Event],
) -> None:
    facts = {message.DESCRIPTOR.full_name for message in fact_messages()}
    assert facts == FACTS
    for message in fact_messages():
        assert message.DESCRIPTOR.GetOptions().HasExtension(EVENT), message
    # Nothing else in the contracts is declared an event (not the envelope, not an API type).
    assert set(declared) == FACTS


def test_each_event_names_its_owner_its_consumers_and_a_field_of_its_aggregate(
    declared: dict[str, Event],
) -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    messages = {f"{f.package}.{m.name}": m for f in files.file for m in f.message_type}
    for name, event in declared.items():
        service = name.split(".")[1]
        assert event.producer == service, name
        assert event.file == f"shop/{service}/v1/{service}_events.proto", name
        assert event.consumers, name
        assert set(event.consumers) <= set(CONSUMERS), name
        aggregate = {f.name: f for f in messages[name].field}[event.aggregate_field]
        assert aggregate.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING, name
        assert event.subject == name
    notified = {name for name, event in declared.items() if "notification" in event.consumers}
    assert notified == {"shop.order.v1.OrderConfirmed", "shop.order.v1.OrderCancelled"}
    assert all("reporting" in event.consumers for event in declared.values())


def test_the_facts_carry_what_their_consumers_need() -> None:
    def fields(message: type[Message]) -> set[str]:
        return set(message.DESCRIPTOR.fields_by_name)

    # Notification: the order, its user, its state, its total, and why it was cancelled.
    notified = {"order_id", "user_id", "state", "total"}
    assert notified <= fields(order_events_pb2.OrderConfirmed)
    assert notified | {"cancel_reason"} <= fields(order_events_pb2.OrderCancelled)
    # Reporting: per SKU the units and prices, the total and the user (the day is the
    # envelope's occurred_at), and an order's SKUs from the moment it is placed.
    for message in (
        order_events_pb2.OrderPlaced,
        order_events_pb2.OrderConfirmed,
        order_events_pb2.OrderCancelled,
    ):
        assert {"order_id", "user_id", "line_items"} <= fields(message)
    assert {"sku", "quantity", "unit_price"} <= set(order_pb2.LineItem.DESCRIPTOR.fields_by_name)
    total = order_events_pb2.OrderConfirmed.DESCRIPTOR.fields_by_name["total"]
    assert total.message_type is money_pb2.Money.DESCRIPTOR
    assert "occurred_at" in envelope_pb2.EventEnvelope.DESCRIPTOR.fields_by_name


def test_a_fact_travels_in_its_envelope_under_its_full_name() -> None:
    confirmed = order_events_pb2.OrderConfirmed(
        order_id="o1",
        user_id="alice",
        line_items=[
            order_pb2.LineItem(
                sku="SKU-TEA-001",
                quantity=2,
                unit_price=money_pb2.Money(currency_code="USD", amount_minor=450),
            )
        ],
        total=money_pb2.Money(currency_code="USD", amount_minor=900),
        state=order_pb2.ORDER_STATE_CONFIRMED,
    )
    spec = confirmed.DESCRIPTOR.GetOptions().Extensions[EVENT]
    envelope = envelope_pb2.EventEnvelope(
        event_id="6f1c2a9e-0000-4000-8000-000000000001",
        type=confirmed.DESCRIPTOR.full_name,
        aggregate_id=getattr(confirmed, spec.aggregate_field),
        sequence=3,
        payload=confirmed.SerializeToString(),
    )
    wire = envelope.SerializeToString()

    received = envelope_pb2.EventEnvelope.FromString(wire)
    assert received.type == "shop.order.v1.OrderConfirmed"
    assert received.aggregate_id == "o1"
    assert spec.producer == "order"
    assert order_events_pb2.OrderConfirmed.FromString(received.payload) == confirmed


def test_a_restock_is_an_aggregate_of_its_sku() -> None:
    restocked = inventory_events_pb2.StockRestocked(sku="SKU-TEA-001", quantity=5)
    spec = restocked.DESCRIPTOR.GetOptions().Extensions[EVENT]
    assert getattr(restocked, spec.aggregate_field) == "SKU-TEA-001"
    # The inventory facts reuse the API's item: the same fields, the same meaning.
    items = inventory_events_pb2.StockReserved.DESCRIPTOR.fields_by_name["items"]
    assert items.message_type is inventory_pb2.ReservationItem.DESCRIPTOR


def test_an_order_event_shows_every_fact_of_the_order_log() -> None:
    """ListOrderEvents' entry has one field of its oneof per fact an order's log holds
    (services.order.events.FACTS), so no entry is shown without its fact."""
    oneof = order_service_pb2.OrderEvent.DESCRIPTOR.oneofs_by_name["fact"]
    shown = {field.message_type.full_name for field in oneof.fields if field.message_type}
    order_facts = {m.DESCRIPTOR.full_name for m in fact_messages() if m in order_log.FACTS}
    assert shown == {m.DESCRIPTOR.full_name for m in order_log.FACTS} == order_facts
    assert order_facts == {name for name in FACTS if name.startswith("shop.order.")}
