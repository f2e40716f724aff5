"""Payment's settings (flags or SHOP_* variables; see `python -m services.payment -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import StoreConfig, setting
from services.payment.faults import MUTATING


@dataclass(frozen=True)
class PaymentConfig(StoreConfig):
    """Settings of the payment service."""

    db_path: pathlib.Path = setting(pathlib.Path("var/payment.db"), "SQLite database file")
    lose_replies: str = setting(
        "",
        "TEST ONLY: METHOD:N, e.g. CapturePayment:2 - the first N calls of METHOD take effect,"
        " then answer UNAVAILABLE, as if the reply were lost on the way back",
    )
    delay_seconds: float = setting(
        0.0, "TEST ONLY: wait this long before each authorize, capture or void (a slow instance)"
    )
    flaky_calls: int = setting(
        0,
        "TEST ONLY: of the first 2N authorize/capture/void calls, fail every second one"
        " with UNAVAILABLE before doing anything",
    )

    def problems(self) -> list[str]:
        found = super().problems()
        if self.delay_seconds < 0 or self.flaky_calls < 0:
            found.append("delay_seconds and flaky_calls must be >= 0")
        if self.lose_replies:
            method, _, count = self.lose_replies.partition(":")
            if method not in MUTATING or not count.isdigit():
                found.append(
                    f"lose_replies must be METHOD:N with METHOD one of {', '.join(MUTATING)},"
                    f" got {self.lose_replies!r}"
                )
        return found
