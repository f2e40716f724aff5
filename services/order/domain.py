"""Order's domain: orders, the saga's phases, limits and failures. No gRPC, no SQL.

The saga's phases, in order: STARTED (order persisted) -> RESERVED (stock held, prices
known) -> COMMITTING (money held, and the pivot: from here the order goes forward) ->
CONFIRMED. AUTHORIZED (money held, not yet the pivot) is recorded instead of COMMITTING only
when the user asked to cancel while the payment was being authorized. A final failure
before the pivot, or a commit that finds its hold gone, moves to COMPENSATING -> CANCELLED.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from services.common.errors import ErrorKind, FieldViolation, ServiceError

MAX_TOTAL_MINOR = 100_000_000
CANCELLED_BY_USER = "CANCELLED_BY_USER"


class OrderState(enum.Enum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class Phase(enum.Enum):
    STARTED = "STARTED"
    RESERVED = "RESERVED"
    AUTHORIZED = "AUTHORIZED"
    COMMITTING = "COMMITTING"
    COMPENSATING = "COMPENSATING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


FINAL_PHASES = frozenset({Phase.CONFIRMED, Phase.CANCELLED})
# Phases a user's cancel can still stop: the pivot has not been passed.
CANCELLABLE_PHASES = frozenset({Phase.STARTED, Phase.RESERVED, Phase.AUTHORIZED})
# Phases after which an AuthorizePayment may have reached payment, so a void is owed.
PAYMENT_ATTEMPTED_PHASES = frozenset({Phase.RESERVED, Phase.AUTHORIZED, Phase.COMMITTING})


@dataclass(frozen=True)
class LineItem:
    sku: str
    quantity: int
    price_minor: int | None = None
    currency: str = ""


@dataclass(frozen=True)
class Order:
    order_id: str
    user_id: str
    request_id: str
    items: tuple[LineItem, ...]
    state: OrderState
    cancel_reason: str
    total_minor: int | None
    currency: str
    created_at: float
    updated_at: float
    seq: int


@dataclass(frozen=True)
class Saga:
    order_id: str
    phase: Phase
    compensate_from: Phase | None
    cancel_requested: bool
    failure: ServiceError | None
    parked: bool = False
    """Stopped for an operator (see ParkedSaga): driven no more until resumed."""


# Why a saga cancelled an order when the user could not pay: what the decline limit counts.
DECLINE_REASONS = ("INSUFFICIENT_FUNDS", "ACCOUNT_NOT_FOUND")


@dataclass(frozen=True)
class Quota:
    """What one user may have at once (checked as an order is written, in its transaction,
    so concurrent calls cannot slip past it together)."""

    max_open_orders: int
    """PENDING orders at once."""
    max_declines: int
    """Orders cancelled for want of money (DECLINE_REASONS) in the last
    `decline_window_seconds`; past it the user's new orders are refused before any stock is
    held for them."""
    decline_window_seconds: float


@dataclass(frozen=True)
class Lease:
    """The right to drive one saga, held by one order instance (`owner`) at a time.

    Each change of hands takes a new `epoch`, and every saga write names the lease it is
    made under: a write under an older epoch is refused (fencing), so an owner that was
    paused past its lease and wakes up cannot undo what its successor did."""

    order_id: str
    owner: str
    epoch: int


class LeaseLost(Exception):
    """Another instance holds the saga's lease now: this one stops driving it."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(f"saga {lease.order_id}: lease epoch {lease.epoch} is no longer held")
        self.lease = lease


def is_free(order: Order) -> bool:
    """A free order (a total of 0, once the hold has priced it) owes nothing, so the saga
    makes no payment call for it: PaymentService holds only amounts above 0, and a
    payment of nothing would be a record of nothing. Its captured amount is its total, 0."""
    return order.total_minor == 0


@dataclass(frozen=True)
class ParkedSaga:
    """A saga the orchestrator stopped driving: `phase` is where it stands, `reason` the
    UPPER_SNAKE cause, `detail` the last error; an operator resumes it once fixed."""

    order_id: str
    user_id: str
    phase: Phase
    reason: str
    detail: str
    parked_at: float
    seq: int
    """Its place in the list (the row's rowid): pages are cut after one."""


def fingerprint(items: tuple[LineItem, ...]) -> str:
    """What makes two CreateOrder calls with one request id the same request: the SKUs and
    quantities in any order, since a retry may list them otherwise (the order keeps them
    as first sent). Sorting whole lines, not SKUs, keeps it exact even if a SKU were
    listed twice (validation refuses that)."""
    return ";".join(sorted(f"{i.sku}x{i.quantity}" for i in items))


def same_request(stored: str, items: tuple[LineItem, ...]) -> bool:
    """Whether `items` are the request whose fingerprint is `stored`.

    Rows written before fingerprints were sorted hold their lines in request order:
    sorting the stored lines too makes those the same as new ones, so a retry of an old
    order, in any order, still finds it.
    """
    return ";".join(sorted(stored.split(";"))) == fingerprint(items)


def cancelled_by_user() -> ServiceError:
    return ServiceError(
        ErrorKind.FAILED_PRECONDITION, CANCELLED_BY_USER, "the user cancelled the order"
    )


def encode_failure(error: ServiceError) -> str:
    return json.dumps(
        {
            "kind": error.kind.value,
            "reason": error.reason,
            "message": error.message,
            "metadata": error.metadata,
            "violations": [[v.field, v.description] for v in error.violations],
        }
    )


def decode_failure(text: str) -> ServiceError | None:
    if not text:
        return None
    data = json.loads(text)
    return ServiceError(
        ErrorKind(data["kind"]),
        data["reason"],
        data["message"],
        metadata=data["metadata"],
        violations=tuple(FieldViolation(f, d) for f, d in data["violations"]),
    )
