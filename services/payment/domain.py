"""Payment's domain: accounts, payments and their limits. No gRPC, no SQL."""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_AMOUNT_MINOR = 100_000_000
# How long an authorization holds money when its caller names no duration (callers older
# than authorization_duration): PaymentConfig.default_authorization_seconds' default.
# The limits are services.common.validation's, shared with order.
DEFAULT_AUTHORIZATION_SECONDS = 86_400.0


class PaymentState(enum.Enum):
    AUTHORIZED = "AUTHORIZED"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    DECLINED = "DECLINED"
    EXPIRED = "EXPIRED"


# States a payment never leaves and in which it holds no money: past the retention they
# may be pruned (PaymentStore.prune). CAPTURED is final too, but it is the record of money
# taken, and is kept.
PRUNABLE_STATES = (PaymentState.VOIDED, PaymentState.DECLINED, PaymentState.EXPIRED)


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
    expire_at: float | None = None
    """When an AUTHORIZED payment gives its money back; None in every other state."""
