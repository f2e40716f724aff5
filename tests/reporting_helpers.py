"""Fakes and event builders for the reporting tests: stream messages as the outbox relay
publishes them (services.common.events' envelope), and a source and names without NATS
or inventory."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import Message as ProtoMessage

from services.common.events import envelope
from shop.inventory.v1 import inventory_events_pb2 as inv
from shop.inventory.v1 import inventory_pb2
from shop.money.v1 import money_pb2
from shop.order.v1 import order_events_pb2 as ordev
from shop.order.v1 import order_pb2

DAY1 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass
class FakeMessage:
    data: bytes
    stream_sequence: int
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay_seconds: float | None = None) -> None:
        self.settled.append("nak")

    async def term(self) -> None:
        self.settled.append("term")


class FakeNames:
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.asked: list[str] = []
        self.down = False

    async def name(self, sku: str) -> str:
        if self.down:
            raise ConnectionError("inventory is away")
        self.asked.append(sku)
        return self.names.get(sku, "")


class FakeSource:
    def __init__(self, last: int | None) -> None:
        self.last = last

    async def fetch(self, batch: int, wait_seconds: float) -> Sequence[FakeMessage]:
        return []

    async def last_sequence(self) -> int | None:
        return self.last


def usd(minor: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", amount_minor=minor)


def wire(fact: ProtoMessage, sequence: int, at: float, event_id: str | None = None) -> bytes:
    return envelope(
        fact, event_id=event_id or str(uuid.uuid4()), sequence=sequence, occurred_at=at
    ).SerializeToString()


def order_events(
    order_id: str,
    user: str,
    at: float,
    *,
    confirm: bool,
    skus: tuple[str, str] = ("SKU-TEA", "SKU-MUG"),
) -> list[bytes]:
    """An order's events as the saga emits them: placed, committed and confirmed, or
    placed and cancelled."""
    lines = [
        order_pb2.LineItem(sku=skus[0], quantity=2, unit_price=usd(450)),
        order_pb2.LineItem(sku=skus[1], quantity=1, unit_price=usd(1200)),
    ]
    placed = ordev.OrderPlaced(
        order_id=order_id,
        user_id=user,
        line_items=[order_pb2.LineItem(sku=i.sku, quantity=i.quantity) for i in lines],
        state=order_pb2.ORDER_STATE_PENDING,
    )
    if not confirm:
        cancelled = ordev.OrderCancelled(
            order_id=order_id,
            user_id=user,
            line_items=lines,
            total=usd(2100),
            state=order_pb2.ORDER_STATE_CANCELLED,
            cancel_reason="INSUFFICIENT_FUNDS",
        )
        return [wire(placed, 1, at), wire(cancelled, 2, at + 1)]
    committed = inv.StockCommitted(
        order_id=order_id,
        user_id=user,
        items=[
            inventory_pb2.ReservationItem(sku=i.sku, quantity=i.quantity, unit_price=i.unit_price)
            for i in lines
        ],
    )
    confirmed = ordev.OrderConfirmed(
        order_id=order_id,
        user_id=user,
        line_items=lines,
        total=usd(2100),
        state=order_pb2.ORDER_STATE_CONFIRMED,
    )
    return [wire(placed, 1, at), wire(committed, 2, at + 1), wire(confirmed, 2, at + 2)]


def messages(datas: Sequence[bytes], first: int = 1) -> list[FakeMessage]:
    return [FakeMessage(d, first + i) for i, d in enumerate(datas)]


def read_model_query(table: str) -> str:
    """A query of every row of `table` as the read model holds it, for comparing a rebuild
    with the live tables: applied_events' `applied_at` (when, not what) left out."""
    columns = "event_id, stream_sequence, type" if table == "applied_events" else "*"
    return f"SELECT {columns} FROM {table} ORDER BY 1, 2"
