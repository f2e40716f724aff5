"""Order's settings (flags or SHOP_* variables; see `python -m services.order -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import StoreConfig, setting

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

    db_path: pathlib.Path = setting(pathlib.Path("var/order.db"), "SQLite database file")
    inventory_target: str = setting("127.0.0.1:50051", "gRPC address of the inventory service")
    payment_target: str = setting("127.0.0.1:50052", "gRPC address of the payment service")
    call_timeout_seconds: float = setting(2.0, "deadline of each call to inventory or payment")
    step_retry_seconds: float = setting(
        10.0,
        "how long a saga step before the pivot retries UNAVAILABLE/DEADLINE_EXCEEDED "
        "before the order is cancelled",
    )
    max_backoff_seconds: float = setting(2.0, "longest wait between two retries of a step")
    hold_seconds: float = setting(900.0, "how long stock stays held for an order")
    create_wait_seconds: float = setting(
        10.0, "how long CreateOrder waits for the saga before answering with a PENDING order"
    )
    recovery_interval_seconds: float = setting(
        30.0, "how often to resume sagas that no process has moved for that long"
    )
    crash_at: str = setting(
        "", "TEST ONLY: kill this process with SIGKILL at a saga step: " + ", ".join(CRASH_POINTS)
    )

    def problems(self) -> list[str]:
        found = super().problems()
        for name in (
            "call_timeout_seconds",
            "step_retry_seconds",
            "max_backoff_seconds",
            "hold_seconds",
            "create_wait_seconds",
            "recovery_interval_seconds",
        ):
            if getattr(self, name) <= 0:
                found.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("inventory_target", "payment_target"):
            if not getattr(self, name):
                found.append(f"{name} must be set (host:port)")
        if self.crash_at and self.crash_at not in CRASH_POINTS:
            found.append(
                f"crash_at must be one of {', '.join(CRASH_POINTS)}, got {self.crash_at!r}"
            )
        return found
