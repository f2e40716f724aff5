"""Inventory's settings (flags or SHOP_* variables; see `python -m services.inventory -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import StoreConfig, setting


@dataclass(frozen=True)
class InventoryConfig(StoreConfig):
    """Settings of the inventory service."""

    db_path: pathlib.Path = setting(
        pathlib.Path("var/inventory.db"), "SQLite database file (when db_url is unset)"
    )
    sweep_interval_seconds: float = setting(
        1.0,
        "how often holds past their expire time give their stock back, and reservations"
        " past the retention are pruned",
    )
    retention_seconds: float = setting(
        7 * 86_400.0,
        "how long a reservation that holds nothing (released, expired, a release's"
        " tombstone) is kept, counted from its hold's expire time; committed ones are kept"
        " for ever",
    )

    def problems(self) -> list[str]:
        found = super().problems()
        for name in ("sweep_interval_seconds", "retention_seconds"):
            if getattr(self, name) <= 0:
                found.append(f"{name} must be > 0, got {getattr(self, name):g}")
        return found
