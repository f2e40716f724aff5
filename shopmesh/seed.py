"""Seed files: the catalog and accounts inventory and payment load at their first start,
and the contact addresses notification loads (the format their stores' `seed` reads; the
demo's is services/demo_data.json)."""

from __future__ import annotations

import json
import pathlib


def write_seed(
    path: pathlib.Path,
    products: dict[str, tuple[int, int]],
    accounts: dict[str, int],
) -> pathlib.Path:
    """A seed file: products as {sku: (unit price, stock)}, accounts as {user: balance}."""
    path.write_text(
        json.dumps(
            {
                "products": [
                    {"sku": sku, "name": sku.title(), "unit_price_minor": price, "quantity": stock}
                    for sku, (price, stock) in products.items()
                ],
                "accounts": [{"user_id": u, "balance_minor": b} for u, b in accounts.items()],
                # Every account holder has an address for the notification service.
                "contacts": [
                    {"user_id": u, "email_address": f"{u}@shopmesh.example"} for u in accounts
                ],
            }
        )
    )
    return path
