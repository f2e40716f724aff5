"""Inventory's settings (flags or SHOP_* variables; see `python -m services.inventory -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import StoreConfig, setting


@dataclass(frozen=True)
class InventoryConfig(StoreConfig):
    """Settings of the inventory service."""

    db_path: pathlib.Path = setting(pathlib.Path("var/inventory.db"), "SQLite database file")
    sweep_interval_seconds: float = setting(
        1.0, "how often holds past their expire time give their stock back"
    )

    def problems(self) -> list[str]:
        found = super().problems()
        if self.sweep_interval_seconds <= 0:
            found.append(f"sweep_interval_seconds must be > 0, got {self.sweep_interval_seconds}")
        return found
