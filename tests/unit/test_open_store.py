"""The `open_store` fixture (tests/stores.py) on either backend: each test starts on an
empty database, sequences from the start, whatever the tests before it wrote; two stores
of one service in a test are two instances on one database."""

from __future__ import annotations

import pytest

from services.order.domain import LineItem
from services.order.store import OrderStore
from tests.stores import StoreOpener, rows

ITEMS = (LineItem("SKU-TEA", 1),)


@pytest.mark.parametrize("run", ["first", "second"])
async def test_each_test_starts_on_an_empty_database(open_store: StoreOpener, run: str) -> None:
    store = await open_store(OrderStore)
    assert await rows(store, "SELECT order_id FROM orders") == []
    order, created = await store.create("o1", "alice", "r1", ITEMS, 0.0)
    assert created and order.seq == 1  # the sequence restarted too


async def test_two_stores_of_one_service_share_one_database(open_store: StoreOpener) -> None:
    a, b = await open_store(OrderStore), await open_store(OrderStore)
    assert a is not b and a.db is not b.db
    await a.create("o1", "alice", "r1", ITEMS, 0.0)
    assert (await b.order("o1")).user_id == "alice"
    assert await rows(a, "SELECT COUNT(*) FROM orders") == [(1,)]  # b's open emptied nothing
