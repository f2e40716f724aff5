"""Payment's settings (flags or SHOP_* variables; see `python -m services.payment -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import StoreConfig, setting


@dataclass(frozen=True)
class PaymentConfig(StoreConfig):
    """Settings of the payment service."""

    db_path: pathlib.Path = setting(pathlib.Path("var/payment.db"), "SQLite database file")
    lose_replies: str = setting(
        "",
        "TEST ONLY: METHOD:N, e.g. CapturePayment:2 - the first N calls of METHOD take effect,"
        " then answer UNAVAILABLE, as if the reply were lost on the way back",
    )

    def problems(self) -> list[str]:
        found = super().problems()
        if self.lose_replies:
            method, _, count = self.lose_replies.partition(":")
            if method not in LOSABLE or not count.isdigit():
                found.append(
                    f"lose_replies must be METHOD:N with METHOD one of {', '.join(LOSABLE)},"
                    f" got {self.lose_replies!r}"
                )
        return found


LOSABLE = ("AuthorizePayment", "CapturePayment", "VoidPayment")
