"""What the read model makes of an event: decoding a stream message into the facts it
applies. No gRPC, no SQL.

Which event drives which table (docs/reporting.md):
- StockCommitted: sku_day_sales and product_sales (units sold per SKU are what inventory
  moved to `sold`, so they equal its sold counts);
- OrderConfirmed: day_revenue (revenue is the confirmed orders' totals);
- OrderPlaced, OrderConfirmed, OrderCancelled: user_orders and their lines;
- every other contract event (the saga's steps, holds, releases, restocks, payments) is
  applied with no effect on the tables (recorded, so that its redelivery is a duplicate too);
- a type the contracts here do not know (a newer producer's) is skipped and counted;
- a message whose envelope or payload does not decode is parked.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from shop.events.v1 import envelope_pb2
from shop.inventory.v1 import inventory_events_pb2
from shop.order.v1 import order_events_pb2, order_pb2
from shop.payment.v1 import payment_events_pb2


def utc_day(seconds: float) -> str:
    """The calendar day, in UTC, of a time in seconds since the epoch: YYYY-MM-DD."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date().isoformat()


class OrderState(enum.Enum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class Line:
    """One product of an order or a sale; the price is None while it is not known."""

    sku: str
    quantity: int
    unit_price_minor: int | None = None
    currency: str = ""


@dataclass(frozen=True)
class Sale:
    """StockCommitted: the order's lines were sold."""

    order_id: str
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class OrderChange:
    """An order event: the order's state after it, and what it carried."""

    order_id: str
    user_id: str
    state: OrderState
    lines: tuple[Line, ...]
    total_minor: int | None
    currency: str
    cancel_reason: str = ""


Effect = Sale | OrderChange | None
"""What an event changes in the tables; None: a known event with no effect."""


class Outcome(enum.Enum):
    APPLY = "apply"
    """A contract event: recorded by id, and its effect (if any) applied."""
    SKIP = "skip"
    """A type this read model does not know: recorded by id and counted, no effect."""
    PARK = "park"
    """Undecodable: counted and terminated, never delivered again."""


@dataclass(frozen=True)
class Event:
    """One stream message, decoded."""

    outcome: Outcome
    stream_sequence: int
    event_id: str = ""
    type: str = ""
    sequence: int = 0
    occurred_at: float = 0.0
    effect: Effect = None
    problem: str = ""
    """Why it was parked."""

    @property
    def skus(self) -> set[str]:
        if isinstance(self.effect, Sale | OrderChange):
            return {line.sku for line in self.effect.lines}
        return set()


_NO_EFFECT: tuple[type[Message], ...] = (
    # The saga's steps between an order's placing and its end: its final event carries
    # what the tables need.
    order_events_pb2.OrderReserved,
    order_events_pb2.OrderPaymentAuthorized,
    order_events_pb2.OrderCommitting,
    order_events_pb2.OrderCancelRequested,
    order_events_pb2.OrderCompensating,
    inventory_events_pb2.StockReserved,
    inventory_events_pb2.StockReleased,
    inventory_events_pb2.StockRestocked,
    payment_events_pb2.PaymentAuthorized,
    payment_events_pb2.PaymentCaptured,
    payment_events_pb2.PaymentVoided,
)
_KNOWN: dict[str, type[Message]] = {
    m.DESCRIPTOR.full_name: m  # type: ignore[attr-defined]
    for m in (
        order_events_pb2.OrderPlaced,
        order_events_pb2.OrderConfirmed,
        order_events_pb2.OrderCancelled,
        inventory_events_pb2.StockCommitted,
        *_NO_EFFECT,
    )
}


KNOWN_TYPES = frozenset(_KNOWN)
"""The event types this read model knows; any other is a newer producer's (skipped)."""


def decode(data: bytes, stream_sequence: int) -> Event:
    """The message's event. Fields a newer contract added are ignored (protobuf keeps
    them as unknown fields); a type not in _KNOWN is SKIP; anything that does not parse,
    or an envelope without an id or type, is PARK."""
    envelope = envelope_pb2.EventEnvelope()
    try:
        envelope.ParseFromString(data)
    except DecodeError as error:
        return Event(Outcome.PARK, stream_sequence, problem=f"envelope: {error}")
    if not envelope.event_id or not envelope.type:
        return Event(Outcome.PARK, stream_sequence, problem="envelope without event_id or type")
    base = {
        "stream_sequence": stream_sequence,
        "event_id": envelope.event_id,
        "type": envelope.type,
        "sequence": envelope.sequence,
        "occurred_at": envelope.occurred_at.ToNanoseconds() / 1e9,
    }
    kind = _KNOWN.get(envelope.type)
    if kind is None:
        return Event(Outcome.SKIP, **base)  # type: ignore[arg-type]
    fact = kind()
    try:
        fact.ParseFromString(envelope.payload)
    except DecodeError as error:
        return Event(Outcome.PARK, problem=f"payload of {envelope.type}: {error}", **base)  # type: ignore[arg-type]
    return Event(Outcome.APPLY, effect=_effect(fact), **base)  # type: ignore[arg-type]


def _effect(fact: Message) -> Effect:
    if isinstance(fact, inventory_events_pb2.StockCommitted):
        return Sale(
            fact.order_id,
            tuple(
                Line(i.sku, i.quantity, i.unit_price.amount_minor, i.unit_price.currency_code)
                for i in fact.items
            ),
        )
    if isinstance(fact, order_events_pb2.OrderPlaced):
        return OrderChange(
            fact.order_id, fact.user_id, OrderState.PENDING, _lines(fact.line_items), None, ""
        )
    if isinstance(fact, order_events_pb2.OrderConfirmed | order_events_pb2.OrderCancelled):
        has_total = fact.HasField("total")
        return OrderChange(
            fact.order_id,
            fact.user_id,
            OrderState.CONFIRMED
            if isinstance(fact, order_events_pb2.OrderConfirmed)
            else OrderState.CANCELLED,
            _lines(fact.line_items),
            fact.total.amount_minor if has_total else None,
            fact.total.currency_code if has_total else "",
            getattr(fact, "cancel_reason", ""),
        )
    return None


def _lines(items: object) -> tuple[Line, ...]:
    found = []
    for item in items:  # type: ignore[attr-defined]
        assert isinstance(item, order_pb2.LineItem)
        priced = item.HasField("unit_price")
        found.append(
            Line(
                item.sku,
                item.quantity,
                item.unit_price.amount_minor if priced else None,
                item.unit_price.currency_code if priced else "",
            )
        )
    return tuple(found)
