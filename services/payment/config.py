"""Payment's settings (flags or SHOP_* variables; see `python -m services.payment -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import StoreConfig, setting


@dataclass(frozen=True)
class PaymentConfig(StoreConfig):
    """Settings of the payment service."""

    db_path: pathlib.Path = setting(pathlib.Path("var/payment.db"), "SQLite database file")
