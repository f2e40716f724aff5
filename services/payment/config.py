"""Payment's settings (flags or SHOP_* variables; see `python -m services.payment -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import ServerConfig, setting


@dataclass(frozen=True)
class PaymentConfig(ServerConfig):
    """Settings of the payment service."""

    db_path: pathlib.Path = setting(pathlib.Path("var/payment.db"), "SQLite database file")
