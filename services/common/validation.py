"""What a request must look like: the contract's field rules, and the check beside them
that a field annotation cannot say (each SKU once).

The rules are the `(buf.validate.field)` annotations in proto/, read once at start
(services.common.rules). A servicer calls `violations(request)`, adds the checks only it
can make (a page token it issued, each SKU once), then `raise_if_any()`; or, when it has
none, `require_valid(request)`. The hold and authorization limits are read from the same
annotations: the order and payment services check their settings against them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from google.protobuf.message import Message

from services.common.errors import Violations
from services.common.rules import RequestRules, duration_bounds
from shop.inventory.v1 import inventory_service_pb2
from shop.notification.v1 import notification_service_pb2
from shop.order.v1 import order_service_pb2
from shop.payment.v1 import payment_service_pb2
from shop.reporting.v1 import reporting_service_pb2

REQUEST_RULES = RequestRules(
    (
        order_service_pb2.DESCRIPTOR,
        inventory_service_pb2.DESCRIPTOR,
        payment_service_pb2.DESCRIPTOR,
        notification_service_pb2.DESCRIPTOR,
        reporting_service_pb2.DESCRIPTOR,
    )
)

# How long a stock hold may last: inventory refuses others, so the order service, which
# asks for its holds, refuses to start with a hold_seconds outside them.
MIN_HOLD_SECONDS, MAX_HOLD_SECONDS = duration_bounds(
    inventory_service_pb2.ReserveStockRequest, "hold_duration"
)
# How long a payment authorization may hold money: payment refuses others, so the order
# service, which asks for hold + park_after + a margin (see its config), refuses to start
# with settings whose sum exceeds the maximum.
MIN_AUTHORIZATION_SECONDS, MAX_AUTHORIZATION_SECONDS = duration_bounds(
    payment_service_pb2.AuthorizePaymentRequest, "authorization_duration"
)


def violations(request: Message) -> Violations:
    """The request's broken field rules, for the servicer to add its own checks to."""
    return REQUEST_RULES.violations(request)


def require_valid(request: Message) -> None:
    """INVALID_ARGUMENT, with every broken field rule, unless the request keeps them all."""
    REQUEST_RULES.violations(request).raise_if_any()


def check_field(violations: Violations, message: type[Message], field: str, value: Any) -> None:
    """One field's rules on a value (for request bodies that are not messages)."""
    REQUEST_RULES.check_field(violations, message, field, value)


class HasSku(Protocol):
    @property
    def sku(self) -> str: ...


def check_each_sku_once(
    violations: Violations, message: type[Message], field: str, items: Sequence[HasSku]
) -> None:
    """An order's or a reservation's items name each SKU at most once: the second listing
    is a violation. (protovalidate's standard `unique` is for lists of scalars only.) A
    SKU that already broke its own rule is skipped, and so are the items past the list's
    max_items, which the field rules do not check either."""
    skus = [item.sku for item in items[: REQUEST_RULES.max_items(message, field)]]
    if len(set(skus)) == len(skus):
        return
    seen: set[str] = set()
    for index, sku in enumerate(skus):
        path = f"{field}[{index}].sku"
        if violations.has(path):
            continue
        violations.check(sku not in seen, path, "is listed twice")
        seen.add(sku)
