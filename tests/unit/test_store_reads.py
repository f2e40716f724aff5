"""Reads see one moment: a commit that lands while an order's row and its items are read
must not show half of itself (a total without the prices, or the reverse)."""

from __future__ import annotations

import pathlib
import sqlite3

from services.order.domain import LineItem
from services.order.store import OrderStore


def commit_prices_during_the_items_select(store: OrderStore, path: pathlib.Path) -> None:
    """Makes another connection commit the prices and total that record_reserved would,
    just as the read connection starts the first statement that reads the order's items
    (with the order's row, for one order; after the page's rows, for a list)."""
    writer = sqlite3.connect(path, isolation_level=None)
    done = False

    def on_statement(sql: str) -> None:
        nonlocal done
        if not done and "order_items" in sql:
            done = True
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("UPDATE order_items SET price_minor = 250, currency = 'USD'")
            writer.execute("UPDATE orders SET total_minor = 500, currency = 'USD'")
            writer.execute("COMMIT")

    store._reads.set_trace_callback(on_statement)


async def test_get_order_sees_the_row_and_its_items_at_one_moment(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "order.db"
    store = OrderStore(path)
    await store.create("o1", "alice", "r1", (LineItem("SKU-TEA", 2),), 0.0)
    commit_prices_during_the_items_select(store, path)

    order = await store.order("o1", "alice")

    # The whole commit or none of it. (Read as two separate SELECTs with no snapshot, it
    # was total None with price 250: the commit split the read.) One statement reads the
    # row and its items, so the commit lands before it.
    assert (order.total_minor, order.items[0].price_minor) in ((None, None), (500, 250))
    assert (await store.order("o1")).total_minor == 500  # the commit did land
    store.close()


async def test_list_orders_sees_the_rows_and_their_items_at_one_moment(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "order.db"
    store = OrderStore(path)
    await store.create("o1", "alice", "r1", (LineItem("SKU-TEA", 2),), 0.0)
    commit_prices_during_the_items_select(store, path)

    [order] = await store.orders("alice", None, 10)

    assert (order.total_minor, order.items[0].price_minor) == (None, None)
    store.close()
