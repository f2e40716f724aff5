"""InventoryService against a real server in this process (port 0), over a grpc.aio channel."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import time

import grpc
import pytest
from google.protobuf import duration_pb2

from services.inventory.config import InventoryConfig
from services.inventory.domain import Item, ReservationState
from services.inventory.service import create as create_inventory
from services.inventory.store import InventoryStore
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_service_pb2 as rpc
from shop.inventory.v1.inventory_service_pb2_grpc import InventoryServiceStub
from tests.helpers import ADMIN, rejected, serving, user

ALICE = user("alice")


@pytest.fixture
def inventory(inventory_channel: grpc.aio.Channel) -> InventoryServiceStub:
    return InventoryServiceStub(inventory_channel)


def reserve(
    order_id: str, *items: tuple[str, int], hold: float | None = None
) -> rpc.ReserveStockRequest:
    request = rpc.ReserveStockRequest(
        order_id=order_id, items=[pb.ReservationItem(sku=s, quantity=q) for s, q in items]
    )
    if hold is not None:
        request.hold_duration.CopyFrom(duration_pb2.Duration(seconds=int(hold)))
    return request


async def stock(inventory: InventoryServiceStub, sku: str) -> tuple[int, int, int]:
    p = (await inventory.GetProduct(rpc.GetProductRequest(sku=sku))).product
    return p.available_quantity, p.held_quantity, p.sold_quantity


async def test_get_product_returns_price_and_stock(inventory: InventoryServiceStub) -> None:
    product = (await inventory.GetProduct(rpc.GetProductRequest(sku="SKU-MUG"))).product
    assert (product.sku, product.unit_price.amount_minor, product.unit_price.currency_code) == (
        "SKU-MUG",
        1299,
        "USD",
    )
    assert (product.available_quantity, product.held_quantity, product.sold_quantity) == (25, 0, 0)


async def test_unknown_product_is_not_found(inventory: InventoryServiceStub) -> None:
    error = await rejected(inventory.GetProduct(rpc.GetProductRequest(sku="SKU-GHOST")))
    assert (error.code, error.reason, error.domain) == (
        grpc.StatusCode.NOT_FOUND,
        "PRODUCT_NOT_FOUND",
        "inventory.shopmesh",
    )
    assert error.metadata == {"sku": "SKU-GHOST"}


async def test_list_products_pages_through_the_catalog(inventory: InventoryServiceStub) -> None:
    skus, token, pages = [], "", 0
    while True:
        page = await inventory.ListProducts(rpc.ListProductsRequest(page_size=3, page_token=token))
        skus += [p.sku for p in page.products]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert skus == sorted(skus) == ["SKU-LAST", "SKU-MUG", "SKU-NONE", "SKU-TEA"]
    assert pages == 2


async def test_reserve_commit_moves_stock_to_sold(inventory: InventoryServiceStub) -> None:
    held = (
        await inventory.ReserveStock(reserve("o1", ("SKU-MUG", 2), ("SKU-TEA", 3)), metadata=ALICE)
    ).reservation
    assert held.state == pb.RESERVATION_STATE_HELD
    assert {(i.sku, i.quantity, i.unit_price.amount_minor) for i in held.items} == {
        ("SKU-MUG", 2, 1299),
        ("SKU-TEA", 3, 450),
    }
    assert await stock(inventory, "SKU-MUG") == (23, 2, 0)
    committed = (
        await inventory.CommitReservation(
            rpc.CommitReservationRequest(order_id="o1"), metadata=ALICE
        )
    ).reservation
    assert committed.state == pb.RESERVATION_STATE_COMMITTED
    again = await inventory.CommitReservation(
        rpc.CommitReservationRequest(order_id="o1"), metadata=ALICE
    )
    assert again.reservation.state == pb.RESERVATION_STATE_COMMITTED
    assert await stock(inventory, "SKU-MUG") == (23, 0, 2)
    assert await stock(inventory, "SKU-TEA") == (97, 0, 3)
    error = await rejected(
        inventory.ReleaseReservation(rpc.ReleaseReservationRequest(order_id="o1"), metadata=ALICE)
    )
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_COMMITTED",
    )


async def test_reserve_is_idempotent_by_order_id(inventory: InventoryServiceStub) -> None:
    first = await inventory.ReserveStock(reserve("o1", ("SKU-MUG", 2)), metadata=ALICE)
    second = await inventory.ReserveStock(reserve("o1", ("SKU-MUG", 2)), metadata=ALICE)
    assert first == second
    assert await stock(inventory, "SKU-MUG") == (23, 2, 0)
    error = await rejected(inventory.ReserveStock(reserve("o1", ("SKU-MUG", 3)), metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "RESERVATION_MISMATCH")


async def test_release_gives_stock_back_and_leaves_a_tombstone(
    inventory: InventoryServiceStub,
) -> None:
    await inventory.ReserveStock(reserve("o1", ("SKU-MUG", 5)), metadata=ALICE)
    released = await inventory.ReleaseReservation(
        rpc.ReleaseReservationRequest(order_id="o1"), metadata=ALICE
    )
    assert released.reservation.state == pb.RESERVATION_STATE_RELEASED
    assert await stock(inventory, "SKU-MUG") == (25, 0, 0)
    # Releasing an order that never reserved blocks a late ReserveStock for it.
    await inventory.ReleaseReservation(rpc.ReleaseReservationRequest(order_id="o2"), metadata=ALICE)
    late = await inventory.ReserveStock(reserve("o2", ("SKU-MUG", 5)), metadata=ALICE)
    assert late.reservation.state == pb.RESERVATION_STATE_RELEASED
    assert await stock(inventory, "SKU-MUG") == (25, 0, 0)


async def test_out_of_stock_holds_nothing(inventory: InventoryServiceStub) -> None:
    error = await rejected(
        inventory.ReserveStock(reserve("o1", ("SKU-TEA", 1), ("SKU-LAST", 2)), metadata=ALICE)
    )
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "OUT_OF_STOCK",
        {"sku": "SKU-LAST"},
    )
    assert await stock(inventory, "SKU-TEA") == (100, 0, 0)
    assert await stock(inventory, "SKU-LAST") == (1, 0, 0)


async def test_concurrent_reservations_never_oversell(inventory: InventoryServiceStub) -> None:
    calls = [
        inventory.ReserveStock(reserve(f"o{n}", ("SKU-LAST", 1)), metadata=ALICE) for n in range(20)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert await stock(inventory, "SKU-LAST") == (0, 1, 0)


async def test_holds_expire_after_their_ttl(inventory: InventoryServiceStub) -> None:
    await inventory.ReserveStock(reserve("o1", ("SKU-MUG", 4), hold=1), metadata=ALICE)
    assert await stock(inventory, "SKU-MUG") == (21, 4, 0)
    for _ in range(100):  # the sweeper runs every second; wait up to 5 s for it
        if await stock(inventory, "SKU-MUG") == (25, 0, 0):
            break
        await asyncio.sleep(0.05)
    assert await stock(inventory, "SKU-MUG") == (25, 0, 0)
    found = await inventory.GetReservation(rpc.GetReservationRequest(order_id="o1"), metadata=ALICE)
    assert found.reservation.state == pb.RESERVATION_STATE_EXPIRED
    error = await rejected(
        inventory.CommitReservation(rpc.CommitReservationRequest(order_id="o1"), metadata=ALICE)
    )
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_EXPIRED",
    )


async def test_reservations_are_private_to_their_user(inventory: InventoryServiceStub) -> None:
    await inventory.ReserveStock(reserve("o1", ("SKU-MUG", 1)), metadata=ALICE)
    for call in (
        inventory.GetReservation(rpc.GetReservationRequest(order_id="o1"), metadata=user("bob")),
        inventory.CommitReservation(
            rpc.CommitReservationRequest(order_id="o1"), metadata=user("bob")
        ),
        inventory.ReleaseReservation(
            rpc.ReleaseReservationRequest(order_id="o1"), metadata=user("bob")
        ),
    ):
        error = await rejected(call)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    assert await stock(inventory, "SKU-MUG") == (24, 1, 0)


async def test_restock_needs_the_admin_scope_and_is_idempotent(
    inventory: InventoryServiceStub,
) -> None:
    request = rpc.RestockProductRequest(sku="SKU-LAST", quantity=5, request_id="r1")
    error = await rejected(inventory.RestockProduct(request, metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_SCOPE_REQUIRED")
    error = await rejected(inventory.RestockProduct(request))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert (await inventory.RestockProduct(request, metadata=ADMIN)).product.available_quantity == 6
    assert (await inventory.RestockProduct(request, metadata=ADMIN)).product.available_quantity == 6
    other = rpc.RestockProductRequest(sku="SKU-LAST", quantity=7, request_id="r1")
    error = await rejected(inventory.RestockProduct(other, metadata=ADMIN))
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    ghost = rpc.RestockProductRequest(sku="SKU-GHOST", quantity=1, request_id="r2")
    error = await rejected(inventory.RestockProduct(ghost, metadata=ADMIN))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND")


async def test_reserve_needs_a_caller(inventory: InventoryServiceStub) -> None:
    error = await rejected(inventory.ReserveStock(reserve("o1", ("SKU-MUG", 1))))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (reserve("", ("SKU-MUG", 1)), "order_id"),
        (reserve("has space", ("SKU-MUG", 1)), "order_id"),
        (reserve("o1"), "items"),
        (reserve("o1", *[(f"SKU-{n}", 1) for n in range(51)]), "items"),
        (reserve("o1", ("", 1)), "items[0].sku"),
        (reserve("o1", ("sku-lower", 1)), "items[0].sku"),
        (reserve("o1", ("SKU-MUG", 1), ("SKU-MUG", 1)), "items[1].sku"),
        (reserve("o1", ("SKU-MUG", 0)), "items[0].quantity"),
        (reserve("o1", ("SKU-MUG", -3)), "items[0].quantity"),
        (reserve("o1", ("SKU-MUG", 1001)), "items[0].quantity"),
        (reserve("o1", ("SKU-MUG", 1), hold=0), "hold_duration"),
        (reserve("o1", ("SKU-MUG", 1), hold=7200), "hold_duration"),
    ],
)
async def test_reserve_validation(
    inventory: InventoryServiceStub, request_: rpc.ReserveStockRequest, field: str
) -> None:
    error = await rejected(inventory.ReserveStock(request_, metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert field in [v.field for v in error.violations]


async def test_unknown_sku_is_a_field_violation(inventory: InventoryServiceStub) -> None:
    error = await rejected(
        inventory.ReserveStock(reserve("o1", ("SKU-MUG", 1), ("SKU-GHOST", 1)), metadata=ALICE)
    )
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_SKU")
    assert [v.field for v in error.violations] == ["items[1].sku"]
    assert await stock(inventory, "SKU-MUG") == (25, 0, 0)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("GetProduct", "sku"),
        ("ListProducts:size", "page_size"),
        ("ListProducts:token", "page_token"),
        ("GetReservation", "order_id"),
        ("CommitReservation", "order_id"),
        ("ReleaseReservation", "order_id"),
        ("RestockProduct:sku", "sku"),
        ("RestockProduct:quantity", "quantity"),
        ("RestockProduct:request_id", "request_id"),
    ],
)
async def test_other_validation(inventory: InventoryServiceStub, call: str, field: str) -> None:
    requests = {
        "GetProduct": (inventory.GetProduct, rpc.GetProductRequest(sku="")),
        "ListProducts:size": (inventory.ListProducts, rpc.ListProductsRequest(page_size=101)),
        "ListProducts:token": (
            inventory.ListProducts,
            rpc.ListProductsRequest(page_token="garbage!"),
        ),
        "GetReservation": (inventory.GetReservation, rpc.GetReservationRequest(order_id="")),
        "CommitReservation": (
            inventory.CommitReservation,
            rpc.CommitReservationRequest(order_id="a/b"),
        ),
        "ReleaseReservation": (
            inventory.ReleaseReservation,
            rpc.ReleaseReservationRequest(order_id="x" * 65),
        ),
        "RestockProduct:sku": (
            inventory.RestockProduct,
            rpc.RestockProductRequest(sku="?", quantity=1, request_id="r"),
        ),
        "RestockProduct:quantity": (
            inventory.RestockProduct,
            rpc.RestockProductRequest(sku="SKU-MUG", quantity=0, request_id="r"),
        ),
        "RestockProduct:request_id": (
            inventory.RestockProduct,
            rpc.RestockProductRequest(sku="SKU-MUG", quantity=1),
        ),
    }
    method, request = requests[call]
    error = await rejected(method(request, metadata=ADMIN))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [v.field for v in error.violations] == [field]


DAY = 86_400.0


async def one_of_each(store: InventoryStore, prefix: str, at: float) -> None:
    """A reservation in every state, made at `at` with a 1 s hold: committed, released,
    a release tombstone, expired, and one still held (for 1000 days: past the test's clock)."""
    mug = (Item("SKU-MUG", 1),)
    await store.reserve(f"{prefix}committed", "alice", mug, 1, at)
    await store.commit(f"{prefix}committed", "alice", at)
    await store.reserve(f"{prefix}released", "alice", mug, 1, at)
    await store.release(f"{prefix}released", "alice", at)
    await store.release(f"{prefix}tombstone", "alice", at)
    await store.reserve(f"{prefix}expired", "alice", mug, 1, at)
    assert await store.expire_due(at + 1) == 1
    await store.reserve(f"{prefix}held", "alice", mug, 1000 * DAY, at + 1)


def reservation_ids(path: pathlib.Path) -> tuple[set[str], set[str]]:
    """The order ids in reservations, and in reservation_items."""
    with sqlite3.connect(path) as conn:
        return (
            {r[0] for r in conn.execute("SELECT order_id FROM reservations")},
            {r[0] for r in conn.execute("SELECT order_id FROM reservation_items")},
        )


async def test_retention_prunes_finished_reservations_and_never_a_sale(
    tmp_path: pathlib.Path, seed_file: pathlib.Path
) -> None:
    path = tmp_path / "inventory.db"
    store = InventoryStore(path)
    await store.seed(seed_file)
    await one_of_each(store, "old-", at=1000.0)
    await one_of_each(store, "new-", at=1000.0 + 5 * DAY)
    before = await store.product("SKU-MUG")
    # The old ones ended 12 days before, the new ones 7 days (to the second) before.
    assert await store.prune(7 * DAY + 2, now=1000.0 + 12 * DAY) == 3
    everything = {"committed", "released", "tombstone", "expired", "held"}
    kept = {"old-committed", "old-held"} | {f"new-{k}" for k in everything}
    held_or_sold = kept - {"new-tombstone"}  # a tombstone has no items
    assert reservation_ids(path) == (kept, held_or_sold)
    assert await store.product("SKU-MUG") == before  # no stock moved
    assert await store.prune(7 * DAY, now=1000.0 + 100 * DAY) == 3
    assert reservation_ids(path)[0] == {
        f"{p}{k}" for p in ("old-", "new-") for k in ("committed", "held")
    }
    assert (await store.reservation("old-committed")).state is ReservationState.COMMITTED
    assert await store.product("SKU-MUG") == before
    store.close()


async def test_the_sweeper_prunes_past_retention(
    tmp_path: pathlib.Path, seed_file: pathlib.Path
) -> None:
    config = InventoryConfig(
        db_path=tmp_path / "short.db", seed_file=seed_file, retention_seconds=1
    )
    async with serving(await create_inventory(config)) as served:
        inventory = InventoryServiceStub(served.channel)
        await inventory.ReserveStock(reserve("kept", ("SKU-MUG", 2)), metadata=ALICE)
        await inventory.CommitReservation(
            rpc.CommitReservationRequest(order_id="kept"), metadata=ALICE
        )
        await inventory.ReleaseReservation(
            rpc.ReleaseReservationRequest(order_id="gone"), metadata=ALICE
        )
        deadline = time.monotonic() + 10  # the sweeper runs every second
        while "gone" in reservation_ids(config.db_path)[0]:
            assert time.monotonic() < deadline, "the tombstone was never pruned"
            await asyncio.sleep(0.05)
        error = await rejected(
            inventory.GetReservation(rpc.GetReservationRequest(order_id="gone"), metadata=ALICE)
        )
        assert error.reason == "RESERVATION_NOT_FOUND"
        kept = await inventory.GetReservation(
            rpc.GetReservationRequest(order_id="kept"), metadata=ALICE
        )
        assert kept.reservation.state == pb.RESERVATION_STATE_COMMITTED
        assert await stock(inventory, "SKU-MUG") == (23, 0, 2)
