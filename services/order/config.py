"""Order's settings (flags or SHOP_* variables; see `python -m services.order -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import StoreConfig, setting
from services.common.validation import (
    MAX_AUTHORIZATION_SECONDS,
    MAX_HOLD_SECONDS,
    MIN_HOLD_SECONDS,
)
from services.inventory.domain import DEFAULT_HOLD_SECONDS

# Envoy's per-try timeout on the OrderService route (gateway/envoy.yaml is rendered with
# it). CreateOrder must answer before it: past it, Envoy retries a call whose order is
# only waiting for its saga.
GATEWAY_TRY_TIMEOUT_SECONDS = 12.0
# Time kept back from a deadline (the caller's, or the gateway's per-try timeout) to
# answer with the order as it stands.
ANSWER_MARGIN_SECONDS = 0.2

CRASH_POINTS = (
    "after_persist",
    "after_reserve",
    "after_authorize",
    "after_commit",
    "during_compensation",
)


@dataclass(frozen=True)
class OrderConfig(StoreConfig):
    """Settings of the order service."""

    db_path: pathlib.Path = setting(
        pathlib.Path("var/order.db"), "SQLite database file (when db_url is unset)"
    )
    inventory_target: str = setting("127.0.0.1:50051", "gRPC address of the inventory service")
    payment_target: str = setting("127.0.0.1:50052", "gRPC address of the payment service")
    call_timeout_seconds: float = setting(2.0, "deadline of each call to inventory or payment")
    upstream_name: str = setting(
        "gateway",
        "under mutual TLS, the identity the certificate of inventory_target and"
        " payment_target must name (Envoy's internal listener: gateway)",
    )
    step_retry_seconds: float = setting(
        10.0,
        "how long a saga step before the pivot retries UNAVAILABLE/DEADLINE_EXCEEDED "
        "before the order is cancelled",
    )
    max_backoff_seconds: float = setting(2.0, "longest wait between two retries of a step")
    # By default, as long as inventory holds stock for a caller that names no duration.
    hold_seconds: float = setting(
        DEFAULT_HOLD_SECONDS,
        f"how long stock stays held for an order, {MIN_HOLD_SECONDS:g}..{MAX_HOLD_SECONDS:g}",
    )
    create_wait_seconds: float = setting(
        10.0,
        "how long CreateOrder waits for the saga before answering with a PENDING order;"
        f" at most {GATEWAY_TRY_TIMEOUT_SECONDS - ANSWER_MARGIN_SECONDS:g} (Envoy's per-try"
        " timeout less the time to answer)",
    )
    recovery_interval_seconds: float = setting(
        5.0, "how often to look for sagas whose owner's lease has run out, and adopt them"
    )
    lease_seconds: float = setting(
        10.0,
        "how long an instance's lease on a saga lasts unrenewed (renewed every third of it"
        " while driven); past it another instance adopts the saga. More than twice"
        " call_timeout_seconds",
    )
    max_active_sagas: int = setting(
        100, "sagas one instance drives at once; the others wait for a slot"
    )
    max_step_failures: int = setting(
        5,
        "final answers of one saga step past the pivot (or unexpected errors) before the"
        " saga is parked for an operator",
    )
    park_after_seconds: float = setting(
        3600.0,
        "how long one saga step past the pivot retries transient failures before the saga"
        " is parked for an operator",
    )
    max_open_orders_per_user: int = setting(
        10, "PENDING orders one user may have at once; more are refused (RESOURCE_EXHAUSTED)"
    )
    decline_limit: int = setting(
        3,
        "orders of one user cancelled for want of money (INSUFFICIENT_FUNDS, ACCOUNT_NOT_FOUND)"
        " within decline_window_seconds, past which the user's new orders are refused before"
        " any stock is held (RESOURCE_EXHAUSTED)",
    )
    decline_window_seconds: float = setting(
        300.0, "how far back declined orders count towards decline_limit"
    )
    retention_seconds: float = setting(
        7 * 24 * 3600.0,
        "how long a cancelled order (and its request id) is kept after it ended; confirmed"
        " orders are kept for good. At least decline_window_seconds",
    )
    authorization_margin_seconds: float = setting(
        300.0,
        "added to hold_seconds + park_after_seconds to make the TTL the saga asks payment to"
        " hold the money for (covers the clocks of different hosts and the last retries)",
    )
    crash_at: str = setting(
        "", "TEST ONLY: kill this process with SIGKILL at a saga step: " + ", ".join(CRASH_POINTS)
    )

    @property
    def authorization_seconds(self) -> float:
        """How long the saga asks payment to hold an order's money: long enough that it
        cannot expire between the commit and the capture. The authorization is made after
        the stock hold, and inventory commits no hold past its expire time, so the commit
        succeeds at most hold_seconds after the authorization; the capture then retries
        for at most park_after_seconds before the saga is parked; the margin covers clock
        differences between hosts and the last attempt's deadline and backoff."""
        return self.hold_seconds + self.park_after_seconds + self.authorization_margin_seconds

    def problems(self) -> list[str]:
        found = super().problems()
        for name in (
            "call_timeout_seconds",
            "step_retry_seconds",
            "max_backoff_seconds",
            "create_wait_seconds",
            "recovery_interval_seconds",
            "max_step_failures",
            "park_after_seconds",
            "lease_seconds",
            "max_active_sagas",
            "max_open_orders_per_user",
            "decline_limit",
            "decline_window_seconds",
            "retention_seconds",
        ):
            if getattr(self, name) <= 0:
                found.append(f"{name} must be > 0, got {getattr(self, name)}")
        if not MIN_HOLD_SECONDS <= self.hold_seconds <= MAX_HOLD_SECONDS:
            found.append(
                f"hold_seconds must be {MIN_HOLD_SECONDS:g}..{MAX_HOLD_SECONDS:g}"
                f" (what inventory holds stock for), got {self.hold_seconds:g}"
            )
        if self.retention_seconds < self.decline_window_seconds:
            found.append(
                f"retention_seconds must be at least decline_window_seconds"
                f" ({self.decline_window_seconds:g}): the declines it counts must still exist,"
                f" got {self.retention_seconds:g}"
            )
        if self.lease_seconds <= 2 * self.call_timeout_seconds:
            found.append(
                f"lease_seconds must be more than twice call_timeout_seconds"
                f" ({self.call_timeout_seconds:g} s): a call begun on a lease must end before"
                f" another instance may adopt the saga, got {self.lease_seconds:g}"
            )
        margin = self.authorization_margin_seconds
        if margin < 0:
            found.append(f"authorization_margin_seconds must be >= 0, got {margin}")
        elif self.authorization_seconds > MAX_AUTHORIZATION_SECONDS:
            found.append(
                "hold_seconds + park_after_seconds + authorization_margin_seconds must be at"
                f" most {MAX_AUTHORIZATION_SECONDS:g} (how long payment holds an authorization),"
                f" got {self.hold_seconds:g} + {self.park_after_seconds:g}"
                f" + {self.authorization_margin_seconds:g} = {self.authorization_seconds:g}"
            )
        longest_wait = GATEWAY_TRY_TIMEOUT_SECONDS - ANSWER_MARGIN_SECONDS
        if self.create_wait_seconds > longest_wait:
            found.append(
                f"create_wait_seconds must be at most {longest_wait:g}"
                f" (the gateway's per-try timeout, {GATEWAY_TRY_TIMEOUT_SECONDS:g} s, less"
                f" {ANSWER_MARGIN_SECONDS:g} s to answer; past it Envoy retries orders that"
                f" are only waiting), got {self.create_wait_seconds:g}"
            )
        for name in ("inventory_target", "payment_target"):
            if not getattr(self, name):
                found.append(f"{name} must be set (host:port)")
        if self.crash_at and self.crash_at not in CRASH_POINTS:
            found.append(
                f"crash_at must be one of {', '.join(CRASH_POINTS)}, got {self.crash_at!r}"
            )
        return found
