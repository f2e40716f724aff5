"""Payment's domain: accounts, payments and their limits. No gRPC, no SQL."""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_AMOUNT_MINOR = 100_000_000


class PaymentState(enum.Enum):
    AUTHORIZED = "AUTHORIZED"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    DECLINED = "DECLINED"


@dataclass(frozen=True)
class Account:
    user_id: str
    currency: str
    available: int
    held: int


@dataclass(frozen=True)
class Payment:
    order_id: str
    user_id: str
    amount_minor: int
    currency: str
    state: PaymentState
    created_at: float
    updated_at: float
