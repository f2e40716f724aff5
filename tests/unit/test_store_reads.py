"""Reads see one moment: a commit that lands while an order's row and its items are read
must not show half of itself (a total without the prices, or the reverse)."""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3

from services.common.database import Tx
from services.order.domain import LineItem
from services.order.store import OrderStore
from tests.stores import StoreOpener, before_each_statement

PRICES = (
    "UPDATE order_items SET price_minor = 250, currency = 'USD'",
    "UPDATE orders SET total_minor = 500, currency = 'USD'",
)
"""What record_reserved would commit: the items' prices and the order's total."""


async def commit_prices_during_the_items_select(open_store: StoreOpener) -> OrderStore:
    """An order store with an order, and another instance on its database that commits the
    prices and total just as the first starts the first statement that reads the order's
    items (with the order's row, for one order; after the page's rows, for a list)."""
    store = await open_store(OrderStore)
    await store.create("o1", "alice", "r1", (LineItem("SKU-TEA", 2),), 0.0)
    other = await open_store(OrderStore)
    location = open_store.location("order")
    done = False

    async def write(tx: Tx) -> None:
        for statement in PRICES:
            await tx.execute(statement)

    async def on_statement(sql: str, params: tuple[object, ...]) -> None:
        nonlocal done
        if done or "order_items" not in sql:
            return
        done = True
        if isinstance(location, pathlib.Path):
            # On SQLite the read may not suspend for the other store's group commit: the
            # same commit through a connection of its own.
            with contextlib.closing(sqlite3.connect(location, isolation_level=None)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                for statement in PRICES:
                    conn.execute(statement)
                conn.execute("COMMIT")
        else:
            await other.db.write(write)

    before_each_statement(store, on_statement)
    return store


async def test_get_order_sees_the_row_and_its_items_at_one_moment(
    open_store: StoreOpener,
) -> None:
    store = await commit_prices_during_the_items_select(open_store)

    order = await store.order("o1", "alice")

    # The whole commit or none of it. (Read as two separate SELECTs with no snapshot, it
    # was total None with price 250: the commit split the read.) One statement reads the
    # row and its items, so the commit lands before it.
    assert (order.total_minor, order.items[0].price_minor) in ((None, None), (500, 250))
    assert (await store.order("o1")).total_minor == 500  # the commit did land


async def test_list_orders_sees_the_rows_and_their_items_at_one_moment(
    open_store: StoreOpener,
) -> None:
    store = await commit_prices_during_the_items_select(open_store)

    [order] = await store.orders("alice", None, 10)

    assert (order.total_minor, order.items[0].price_minor) == (None, None)
    assert (await store.order("o1")).total_minor == 500
