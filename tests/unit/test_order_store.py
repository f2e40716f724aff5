"""The order store's request-id rule on rows older than the code: a fingerprint stored
before fingerprints were sorted still matches a retry of its order, in any item order."""

from __future__ import annotations

from services.order.domain import LineItem
from services.order.store import OrderStore
from tests.stores import StoreOpener

ITEMS = (LineItem("SKU-TEA", 1), LineItem("SKU-MUG", 2))


async def test_a_fingerprint_stored_in_request_order_still_matches(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    await store.create("o1", "alice", "r1", ITEMS, 0.0)
    # As the code before sorting stored it: the lines in the order they were sent.
    await store.db.write(
        lambda tx: tx.execute("UPDATE orders SET fingerprint = 'SKU-TEAx1;SKU-MUGx2'")
    )
    for items in (ITEMS, ITEMS[::-1]):
        order, created = await store.create("o2", "alice", "r1", items, 1.0)
        assert (order.order_id, created) == ("o1", False)
