"""The order's facts as contract messages, in their envelopes: what each saga transition
appends to the order's log (store.py's `_append_event`), what ListOrderEvents shows and
what the rebuild (history.py) reads back. No SQL.

Times go into the envelope's Timestamp exactly (services.common.convert.timestamp), so
that a time read back (`seconds_of`) is the very float the database row holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError, Message

from services.common.convert import money, timestamp
from services.order.domain import LineItem, Order, OrderState
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_events_pb2 as facts
from shop.order.v1 import order_pb2 as pb

FACTS: tuple[type[Message], ...] = (
    facts.OrderPlaced,
    facts.OrderReserved,
    facts.OrderPaymentAuthorized,
    facts.OrderCommitting,
    facts.OrderCancelRequested,
    facts.OrderCompensating,
    facts.OrderConfirmed,
    facts.OrderCancelled,
)
"""Every fact an order's log holds."""
BY_TYPE: dict[str, type[Message]] = {m.DESCRIPTOR.full_name: m for m in FACTS}
AGGREGATE_FIELD = "order_id"
"""The field of every order fact that holds its aggregate id (its EventSpec says so)."""


def line_items(items: Sequence[LineItem]) -> list[pb.LineItem]:
    return [
        pb.LineItem(
            sku=i.sku,
            quantity=i.quantity,
            unit_price=money(i.price_minor, i.currency) if i.price_minor is not None else None,
        )
        for i in items
    ]


def placed(order_id: str, user_id: str, items: Sequence[LineItem]) -> facts.OrderPlaced:
    return facts.OrderPlaced(
        order_id=order_id,
        user_id=user_id,
        line_items=line_items(items),
        state=pb.ORDER_STATE_PENDING,
    )


def reserved(
    order_id: str, items: Sequence[LineItem], total_minor: int, currency: str
) -> facts.OrderReserved:
    return facts.OrderReserved(
        order_id=order_id, line_items=line_items(items), total=money(total_minor, currency)
    )


def final(
    order: Order, state: OrderState, reason: str
) -> facts.OrderConfirmed | facts.OrderCancelled:
    """OrderConfirmed or OrderCancelled (with `reason`) of `order`, as it ends."""
    total = money(order.total_minor, order.currency) if order.total_minor is not None else None
    if state is OrderState.CONFIRMED:
        return facts.OrderConfirmed(
            order_id=order.order_id,
            user_id=order.user_id,
            line_items=line_items(order.items),
            total=total,
            state=pb.ORDER_STATE_CONFIRMED,
        )
    return facts.OrderCancelled(
        order_id=order.order_id,
        user_id=order.user_id,
        line_items=line_items(order.items),
        total=total,
        state=pb.ORDER_STATE_CANCELLED,
        cancel_reason=reason,
    )


def envelope(
    fact: Message, *, event_id: str, sequence: int, occurred_at: float, request_id: str
) -> envelope_pb2.EventEnvelope:
    """The fact in its envelope; its aggregate is the order (every order fact's
    aggregate_field is order_id)."""
    return envelope_pb2.EventEnvelope(
        event_id=event_id,
        type=fact.DESCRIPTOR.full_name,
        aggregate_id=order_id_of(fact),
        sequence=sequence,
        occurred_at=timestamp(occurred_at),
        request_id=request_id,
        payload=fact.SerializeToString(),
    )


def order_id_of(fact: Message) -> str:
    return str(getattr(fact, AGGREGATE_FIELD))


def fact_of(entry: envelope_pb2.EventEnvelope) -> Message | None:
    """The envelope's fact, decoded; None for a type this code does not know or a payload
    that does not decode as it."""
    kind = BY_TYPE.get(entry.type)
    if kind is None:
        return None
    try:
        return kind.FromString(entry.payload)
    except DecodeError:
        return None
