"""Payment's settings (flags or SHOP_* variables; see `python -m services.payment -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import StoreConfig, setting
from services.common.validation import MAX_AUTHORIZATION_SECONDS, MIN_AUTHORIZATION_SECONDS
from services.payment.domain import DEFAULT_AUTHORIZATION_SECONDS
from services.payment.faults import MUTATING

WEEK_SECONDS = 7 * 86_400.0


@dataclass(frozen=True)
class PaymentConfig(StoreConfig):
    """Settings of the payment service."""

    db_path: pathlib.Path = setting(
        pathlib.Path("var/payment.db"), "SQLite database file (when db_url is unset)"
    )
    default_authorization_seconds: float = setting(
        DEFAULT_AUTHORIZATION_SECONDS,
        "how long an authorization holds money when the caller names no"
        f" authorization_duration, {MIN_AUTHORIZATION_SECONDS:g}..{MAX_AUTHORIZATION_SECONDS:g}",
    )
    sweep_interval_seconds: float = setting(
        1.0,
        "how often authorizations past their expire time give their money back, and"
        " payments past the retention are pruned",
    )
    retention_seconds: float = setting(
        WEEK_SECONDS,
        "how long a payment that holds no money (voided, declined, expired, a void's"
        " tombstone) is kept after its last change; captured ones are kept for ever",
    )
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

    @property
    def any_fault(self) -> bool:
        """Whether a TEST ONLY fault is set; only then is the fault interceptor installed."""
        return bool(self.lose_replies or self.delay_seconds or self.flaky_calls)

    def problems(self) -> list[str]:
        found = super().problems()
        if (
            not MIN_AUTHORIZATION_SECONDS
            <= self.default_authorization_seconds
            <= (MAX_AUTHORIZATION_SECONDS)
        ):
            found.append(
                "default_authorization_seconds must be"
                f" {MIN_AUTHORIZATION_SECONDS:g}..{MAX_AUTHORIZATION_SECONDS:g}"
                " (what an authorization_duration may be),"
                f" got {self.default_authorization_seconds:g}"
            )
        for name in ("sweep_interval_seconds", "retention_seconds"):
            if getattr(self, name) <= 0:
                found.append(f"{name} must be > 0, got {getattr(self, name):g}")
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
