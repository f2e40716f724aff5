"""Field checks and limits the services share: ids, SKUs, item lists, hold and
authorization durations (see errors.Violations)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.common.errors import Violations

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
ID_RULE = "must be 1 to 64 letters, digits, '-' or '_'"
SKU_PATTERN = re.compile(r"[A-Z0-9][A-Z0-9-]{0,63}")
SKU_RULE = "must be 1 to 64 upper-case letters, digits or '-', starting with a letter or digit"
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
MAX_ITEMS = 50
MAX_QUANTITY = 1000
# How long a stock hold may last: inventory refuses others, so the order service, which
# asks for its holds, refuses to start with a hold_seconds outside them.
MIN_HOLD_SECONDS = 1.0
MAX_HOLD_SECONDS = 3600.0
# How long a payment authorization may hold money: payment refuses others, so the order
# service, which asks for hold + park_after + a margin (see its config), refuses to start
# with settings whose sum exceeds the maximum.
MIN_AUTHORIZATION_SECONDS = 1.0
MAX_AUTHORIZATION_SECONDS = 7 * 86_400.0


def check_id(violations: Violations, field: str, value: str) -> bool:
    return violations.check(ID_PATTERN.fullmatch(value) is not None, field, ID_RULE)


def require_order_id(order_id: str) -> None:
    """For requests whose only field is an order id: INVALID_ARGUMENT unless it is one."""
    violations = Violations()
    check_id(violations, "order_id", order_id)
    violations.raise_if_any()


def check_sku(violations: Violations, field: str, sku: str) -> bool:
    return violations.check(SKU_PATTERN.fullmatch(sku) is not None, field, SKU_RULE)


def check_items(violations: Violations, field: str, items: Sequence[tuple[str, int]]) -> None:
    """An order's or a reservation's (sku, quantity) list: 1 to 50 items, each SKU once,
    each quantity 1 to 1000. Violations name `<field>[i].sku` and `<field>[i].quantity`."""
    violations.check(0 < len(items) <= MAX_ITEMS, field, f"must hold 1 to {MAX_ITEMS} items")
    seen: set[str] = set()
    for index, (sku, quantity) in enumerate(items[:MAX_ITEMS]):
        if check_sku(violations, f"{field}[{index}].sku", sku):
            violations.check(sku not in seen, f"{field}[{index}].sku", "is listed twice")
            seen.add(sku)
        violations.check(
            0 < quantity <= MAX_QUANTITY, f"{field}[{index}].quantity", f"must be 1..{MAX_QUANTITY}"
        )
