"""Inventory's domain: products, reservations and their limits. No gRPC, no SQL."""

from __future__ import annotations

import enum
from dataclasses import dataclass

DEFAULT_HOLD_SECONDS = 900.0
"""How long a hold lasts when ReserveStock names no hold_duration; the order service asks
for as long by default (OrderConfig.hold_seconds). The limits are the hold_duration
annotation's (services.common.validation reads them), shared with order."""


class ReservationState(enum.Enum):
    HELD = "HELD"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price_minor: int
    currency: str
    available: int
    held: int
    sold: int


@dataclass(frozen=True)
class Item:
    """One line of a reservation; the price is the one at the time of the hold."""

    sku: str
    quantity: int
    price_minor: int = 0
    currency: str = ""


@dataclass(frozen=True)
class Reservation:
    order_id: str
    user_id: str
    items: tuple[Item, ...]
    state: ReservationState
    expire_at: float


def fingerprint(items: tuple[Item, ...]) -> str:
    """What makes two ReserveStock calls for one order the same call: SKUs and quantities."""
    return ";".join(f"{i.sku}x{i.quantity}" for i in sorted(items, key=lambda i: i.sku))
