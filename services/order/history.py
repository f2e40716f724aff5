"""The rebuild of an order from its event log: replaying its entries gives the order row
(state, cancel reason, total and currency, items with their prices, created and updated
times) and the saga's phase and cancel flag, which must equal what the database holds.

Each saga transition appends its fact in the same write as the change (store.py), so a
log that replays to something else means a transition changed a row without saying so,
or said what it did not do. `shopmesh check` runs `check_order` for every order of a
database. No SQL: the caller reads the rows.

What each fact does to the order, and to the saga:

- OrderPlaced (first, sequence 1): the order, PENDING, its items unpriced, no total;
  created and updated at its time; the saga STARTED.
- OrderReserved: each item's price (by SKU), the total and currency; updated at its
  time; RESERVED.
- OrderPaymentAuthorized: AUTHORIZED. OrderCommitting: COMMITTING. OrderCancelRequested:
  the cancel flag. OrderCompensating: COMPENSATING. None of them changes the order row.
- OrderConfirmed / OrderCancelled (last): the state and the cancel reason; updated at its
  time; CONFIRMED / CANCELLED. The fact's user, items and total must be the order's as
  rebuilt so far: a consumer of the fact sees the order as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from services.common.convert import seconds_of
from services.order import events
from services.order.domain import LineItem, Order, OrderState, Phase
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_events_pb2 as facts
from shop.order.v1 import order_pb2 as pb


class BrokenLog(Exception):
    """The log cannot be replayed: a gap, a fact out of place, one that does not decode."""


@dataclass(frozen=True)
class Rebuilt:
    """What an order's log says about it."""

    order: Order
    """The order row (its `seq`, which no fact carries, is 0)."""
    phase: Phase
    cancel_requested: bool


def replay(entries: Sequence[envelope_pb2.EventEnvelope]) -> Rebuilt:
    """The order and saga the log (ordered by sequence) describes; BrokenLog if it is not
    one order's whole history from its OrderPlaced."""
    if not entries:
        raise BrokenLog("the log is empty")
    rebuilt: Rebuilt | None = None
    for number, entry in enumerate(entries, start=1):
        if entry.sequence != number:
            raise BrokenLog(f"entry {number} has sequence {entry.sequence}")
        fact = events.fact_of(entry)
        if fact is None:
            raise BrokenLog(f"entry {number}: {entry.type!r} does not decode as an order fact")
        if events.order_id_of(fact) != entry.aggregate_id:
            raise BrokenLog(f"entry {number} is about order {events.order_id_of(fact)!r}")
        at = seconds_of(entry.occurred_at)
        if rebuilt is None:
            rebuilt = _placed(fact, entry, at)
        else:
            if rebuilt.order.request_id != entry.request_id:
                raise BrokenLog(f"entry {number} has request id {entry.request_id!r}")
            rebuilt = _apply(rebuilt, fact, at, number)
    assert rebuilt is not None
    return rebuilt


def differences(rebuilt: Rebuilt, order: Order, phase: Phase, cancel_requested: bool) -> list[str]:
    """What the stored order and saga hold that the log does not say, one line each."""
    found = [
        f"{name} is {stored!r} in the row, {told!r} by the log"
        for name in (f.name for f in dataclasses.fields(Order) if f.name != "seq")
        if (stored := getattr(order, name)) != (told := getattr(rebuilt.order, name))
    ]
    if phase is not rebuilt.phase:
        found.append(f"the saga is {phase.value}, {rebuilt.phase.value} by the log")
    if cancel_requested != rebuilt.cancel_requested:
        found.append(
            f"the saga's cancel request is {cancel_requested}, {rebuilt.cancel_requested}"
            " by the log"
        )
    return found


def check_order(
    entries: Sequence[envelope_pb2.EventEnvelope],
    order: Order,
    phase: Phase,
    cancel_requested: bool,
) -> list[str]:
    """Whether the order's log replays to its row and saga: the problems, none if so."""
    try:
        rebuilt = replay(entries)
    except BrokenLog as broken:
        return [f"order {order.order_id}: its log is broken: {broken}"]
    return [
        f"order {order.order_id}: {line}"
        for line in differences(rebuilt, order, phase, cancel_requested)
    ]


def _placed(fact: Message, entry: envelope_pb2.EventEnvelope, at: float) -> Rebuilt:
    if not isinstance(fact, facts.OrderPlaced):
        raise BrokenLog(f"the first entry is {entry.type}, not OrderPlaced")
    order = Order(
        order_id=fact.order_id,
        user_id=fact.user_id,
        request_id=entry.request_id,
        items=tuple(LineItem(i.sku, i.quantity) for i in fact.line_items),
        state=OrderState.PENDING,
        cancel_reason="",
        total_minor=None,
        currency="",
        created_at=at,
        updated_at=at,
        seq=0,
    )
    return Rebuilt(order, Phase.STARTED, cancel_requested=False)


# The phases each intermediate fact may follow, and the phase it moves the saga to.
_MOVES: dict[type[Message], tuple[frozenset[Phase], Phase]] = {
    facts.OrderReserved: (frozenset({Phase.STARTED}), Phase.RESERVED),
    facts.OrderPaymentAuthorized: (frozenset({Phase.RESERVED}), Phase.AUTHORIZED),
    facts.OrderCommitting: (frozenset({Phase.RESERVED, Phase.AUTHORIZED}), Phase.COMMITTING),
    facts.OrderCompensating: (
        frozenset({Phase.STARTED, Phase.RESERVED, Phase.AUTHORIZED, Phase.COMMITTING}),
        Phase.COMPENSATING,
    ),
    facts.OrderConfirmed: (frozenset({Phase.COMMITTING}), Phase.CONFIRMED),
    facts.OrderCancelled: (frozenset(Phase) - {Phase.CONFIRMED, Phase.CANCELLED}, Phase.CANCELLED),
}


def _apply(rebuilt: Rebuilt, fact: Message, at: float, number: int) -> Rebuilt:
    name = fact.DESCRIPTOR.name
    if isinstance(fact, facts.OrderCancelRequested):
        if rebuilt.phase not in (Phase.STARTED, Phase.RESERVED, Phase.AUTHORIZED):
            raise BrokenLog(f"entry {number}: {name} in {rebuilt.phase.value}")
        return dataclasses.replace(rebuilt, cancel_requested=True)
    after_phases, phase = _MOVES.get(type(fact), (frozenset(), Phase.STARTED))
    if rebuilt.phase not in after_phases:
        raise BrokenLog(f"entry {number}: {name} in {rebuilt.phase.value}")
    order = rebuilt.order
    if isinstance(fact, facts.OrderReserved):
        # By SKU, as the store's UPDATE sets them; a SKU not in the order changes nothing.
        held = {i.sku: i for i in fact.line_items}
        order = dataclasses.replace(
            order,
            items=tuple(_priced(i, held[i.sku]) if i.sku in held else i for i in order.items),
            total_minor=fact.total.amount_minor,
            currency=fact.total.currency_code,
            updated_at=at,
        )
    elif isinstance(fact, facts.OrderConfirmed | facts.OrderCancelled):
        told = events.final(order, OrderState.PENDING, "")  # the fields both facts share
        if (fact.user_id, list(fact.line_items)) != (told.user_id, list(told.line_items)) or (
            fact.HasField("total") != told.HasField("total") or fact.total != told.total
        ):
            raise BrokenLog(f"entry {number}: {name} tells another order than the log's")
        reason = fact.cancel_reason if isinstance(fact, facts.OrderCancelled) else ""
        state = OrderState.CONFIRMED if fact.state == pb.ORDER_STATE_CONFIRMED else None
        if isinstance(fact, facts.OrderCancelled):
            state = OrderState.CANCELLED if fact.state == pb.ORDER_STATE_CANCELLED else None
        if state is None:
            raise BrokenLog(f"entry {number}: {name} has state {fact.state}")
        order = dataclasses.replace(order, state=state, cancel_reason=reason, updated_at=at)
    return dataclasses.replace(rebuilt, order=order, phase=phase)


def _priced(item: LineItem, held: pb.LineItem) -> LineItem:
    if not held.HasField("unit_price"):
        return LineItem(item.sku, item.quantity)
    return LineItem(
        item.sku, item.quantity, held.unit_price.amount_minor, held.unit_price.currency_code
    )


def order_of(row: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> Order:
    """The order of an `orders` row and its `order_items` rows (by position), as the
    store reads it."""
    return Order(
        order_id=row["order_id"],
        user_id=row["user_id"],
        request_id=row["request_id"],
        items=tuple(
            LineItem(i["sku"], i["quantity"], i["price_minor"], i["currency"]) for i in items
        ),
        state=OrderState(row["state"]),
        cancel_reason=row["cancel_reason"],
        total_minor=row["total_minor"],
        currency=row["currency"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        seq=row["seq"],
    )
