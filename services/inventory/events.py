"""Inventory's facts (shop/inventory/v1/inventory_events.proto) made from its domain
values: what the store appends to its outbox as stock moves."""

from __future__ import annotations

from collections.abc import Iterable

from services.common.convert import money, timestamp
from services.inventory.domain import Item, Product, Reservation
from shop.inventory.v1 import inventory_events_pb2 as ev
from shop.inventory.v1 import inventory_pb2 as pb


def _items(items: Iterable[Item]) -> list[pb.ReservationItem]:
    return [
        pb.ReservationItem(
            sku=i.sku, quantity=i.quantity, unit_price=money(i.price_minor, i.currency)
        )
        for i in items
    ]


def reserved(r: Reservation) -> ev.StockReserved:
    return ev.StockReserved(
        order_id=r.order_id,
        user_id=r.user_id,
        items=_items(r.items),
        expire_time=timestamp(r.expire_at),
    )


def released(r: Reservation, *, expired: bool) -> ev.StockReleased:
    return ev.StockReleased(
        order_id=r.order_id, user_id=r.user_id, items=_items(r.items), expired=expired
    )


def committed(r: Reservation) -> ev.StockCommitted:
    return ev.StockCommitted(order_id=r.order_id, user_id=r.user_id, items=_items(r.items))


def restocked(product: Product, quantity: int) -> ev.StockRestocked:
    return ev.StockRestocked(
        sku=product.sku, quantity=quantity, available_quantity=product.available
    )
