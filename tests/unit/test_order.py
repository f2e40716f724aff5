"""OrderService against real servers in this process (order, inventory, payment; port 0).

The saga under faults is in tests/service/test_saga.py, against processes; here: the API's contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sqlite3
import time
from typing import cast

import grpc
import pytest

from services.order import domain
from services.order.config import OrderConfig
from services.order.participants import GrpcParticipants
from services.order.service import create as create_order
from services.order.servicer import OrderServicer
from shop.inventory.v1 import inventory_service_pb2 as inventory_rpc
from shop.inventory.v1.inventory_service_pb2_grpc import InventoryServiceStub
from shop.order.v1 import order_pb2 as pb
from shop.order.v1 import order_service_pb2 as rpc
from shop.order.v1.order_service_pb2_grpc import OrderServiceStub
from shop.payment.v1 import payment_service_pb2 as payment_rpc
from shop.payment.v1.payment_service_pb2_grpc import PaymentServiceStub
from shopmesh.seed import write_seed
from tests.helpers import ACCOUNTS, PRODUCTS, Served, rejected, serving, user

ALICE = user("alice")


@pytest.fixture
def seed_file(tmp_path: pathlib.Path) -> pathlib.Path:
    """The shared seed data, and a product given away."""
    return write_seed(tmp_path / "seed.json", {**PRODUCTS, "SKU-FREE": (0, 5)}, ACCOUNTS)


@pytest.fixture
def orders(order_channel: grpc.aio.Channel) -> OrderServiceStub:
    return OrderServiceStub(order_channel)


def create(request_id: str, *items: tuple[str, int]) -> rpc.CreateOrderRequest:
    return rpc.CreateOrderRequest(
        request_id=request_id, line_items=[pb.LineItem(sku=s, quantity=q) for s, q in items]
    )


async def test_create_order_confirms_with_prices_and_total(orders: OrderServiceStub) -> None:
    order = (
        await orders.CreateOrder(create("r1", ("SKU-TEA", 2), ("SKU-MUG", 1)), metadata=ALICE)
    ).order
    assert order.state == pb.ORDER_STATE_CONFIRMED
    assert (order.user_id, order.request_id, order.cancel_reason) == ("alice", "r1", "")
    assert [(i.sku, i.quantity, i.unit_price.amount_minor) for i in order.line_items] == [
        ("SKU-TEA", 2, 450),
        ("SKU-MUG", 1, 1299),
    ]
    assert (order.total.amount_minor, order.total.currency_code) == (2199, "USD")
    got = (
        await orders.GetOrder(rpc.GetOrderRequest(order_id=order.order_id), metadata=ALICE)
    ).order
    assert got == order


async def test_prices_sent_by_the_client_are_ignored(orders: OrderServiceStub) -> None:
    request = create("r1", ("SKU-TEA", 1))
    request.line_items[0].unit_price.amount_minor = 1
    order = (await orders.CreateOrder(request, metadata=ALICE)).order
    assert order.total.amount_minor == 450


async def test_a_free_product_is_sold_and_no_money_moves(
    orders: OrderServiceStub,
    inventory_channel: grpc.aio.Channel,
    payment_channel: grpc.aio.Channel,
) -> None:
    order = (await orders.CreateOrder(create("r1", ("SKU-FREE", 2)), metadata=ALICE)).order
    assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CONFIRMED, "")
    assert (order.total.amount_minor, order.total.currency_code) == (0, "USD")
    account = (
        await PaymentServiceStub(payment_channel).GetAccount(
            payment_rpc.GetAccountRequest(user_id="alice"), metadata=ALICE
        )
    ).account
    assert (account.available_balance.amount_minor, account.held_balance.amount_minor) == (
        ACCOUNTS["alice"],
        0,
    )
    product = (
        await InventoryServiceStub(inventory_channel).GetProduct(
            inventory_rpc.GetProductRequest(sku="SKU-FREE")
        )
    ).product
    assert (product.available_quantity, product.held_quantity, product.sold_quantity) == (3, 0, 2)


async def test_business_failures_cancel_the_order_and_say_why(orders: OrderServiceStub) -> None:
    cases = [
        (create("r1", ("SKU-NONE", 1)), grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_STOCK"),
        (create("r2", ("SKU-MUG", 20)), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"),
        (create("r3", ("SKU-GHOST", 1)), grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_SKU"),
    ]
    for request, code, reason in cases:
        error = await rejected(orders.CreateOrder(request, metadata=user("bob")))
        assert (error.code, error.reason, error.domain) == (code, reason, "order.shopmesh")
        order = (
            await orders.GetOrder(
                rpc.GetOrderRequest(order_id=error.metadata["order_id"]), metadata=user("bob")
            )
        ).order
        assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CANCELLED, reason)
        # The same request id gives the same answer, and nothing more happens.
        again = await rejected(orders.CreateOrder(request, metadata=user("bob")))
        assert (again.reason, again.metadata) == (reason, error.metadata)
    unknown = await rejected(
        orders.CreateOrder(create("r3", ("SKU-GHOST", 1)), metadata=user("bob"))
    )
    assert [v.field for v in unknown.violations] == ["line_items[0].sku"]


async def test_a_caller_without_an_account_is_told_so_with_payments_code(
    orders: OrderServiceStub,
) -> None:
    """ACCOUNT_NOT_FOUND is NOT_FOUND wherever it comes from (GetAccount, AuthorizePayment,
    the order it cancels), and it counts as a decline (DECLINE_REASONS)."""
    nobody = user("nobody")
    error = await rejected(orders.CreateOrder(create("r1", ("SKU-TEA", 1)), metadata=nobody))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    order = (
        await orders.GetOrder(
            rpc.GetOrderRequest(order_id=error.metadata["order_id"]), metadata=nobody
        )
    ).order
    assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CANCELLED, "ACCOUNT_NOT_FOUND")
    assert "ACCOUNT_NOT_FOUND" in domain.DECLINE_REASONS


async def test_request_id_reused_with_other_items_is_rejected(orders: OrderServiceStub) -> None:
    first = (await orders.CreateOrder(create("r1", ("SKU-TEA", 1)), metadata=ALICE)).order
    again = (await orders.CreateOrder(create("r1", ("SKU-TEA", 1)), metadata=ALICE)).order
    assert again.order_id == first.order_id
    error = await rejected(orders.CreateOrder(create("r1", ("SKU-TEA", 2)), metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert error.metadata["order_id"] == first.order_id
    # Request ids are per user: bob's r1 is another order.
    bobs = (await orders.CreateOrder(create("r1", ("SKU-TEA", 2)), metadata=user("bob"))).order
    assert bobs.order_id != first.order_id


async def test_a_retry_with_the_items_reordered_is_the_same_request(
    orders: OrderServiceStub,
) -> None:
    first = (
        await orders.CreateOrder(create("r1", ("SKU-TEA", 1), ("SKU-MUG", 2)), metadata=ALICE)
    ).order
    again = (
        await orders.CreateOrder(create("r1", ("SKU-MUG", 2), ("SKU-TEA", 1)), metadata=ALICE)
    ).order
    assert again.order_id == first.order_id
    assert again.line_items == first.line_items  # as first sent


class CallerContext:
    """What CreateOrder reads of its grpc.aio context: the caller, and no deadline."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ALICE

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # a plaintext port

    def time_remaining(self) -> float | None:
        return None


@pytest.mark.sqlite_only("another connection holds SQLite's write lock, so the order's write waits")
async def test_a_caller_who_leaves_while_the_order_is_written_still_gets_its_saga(
    tmp_path: pathlib.Path, inventory_served: Served, payment_served: Served
) -> None:
    """The servicer is called directly, so that the caller leaves at a known moment: while
    the order's write waits. Over the network, when the cancel lands is a race."""
    config = OrderConfig(
        db_path=tmp_path / "order.db",
        inventory_target=inventory_served.target,
        payment_target=payment_served.target,
    )
    service = await create_order(config)
    async with serving(service):
        servicer = OrderServicer(service.store, service.saga, config)
        context = cast(grpc.aio.ServicerContext, CallerContext())
        # Another process holds the write lock, so the order's write waits in the queue.
        blocker = sqlite3.connect(config.db_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            call = asyncio.create_task(servicer.CreateOrder(create("r1", ("SKU-TEA", 1)), context))
            await asyncio.sleep(0)  # one turn: the call runs up to its first await
            assert not call.done()
            call.cancel()  # the caller goes away, as grpc.aio cancels a handler
            with contextlib.suppress(asyncio.CancelledError):
                await call
        finally:
            blocker.close()  # gives the lock up: the order's write goes ahead
        # The write stands; its saga must run now, not when the recovery loop adopts it.
        deadline = time.monotonic() + 5
        while True:
            placed = await service.store.orders("alice", None, 10)
            if placed and placed[0].state is not domain.OrderState.PENDING:
                break
            assert time.monotonic() < deadline, (
                f"order {placed} still waits for the recovery loop"
                f" ({config.recovery_interval_seconds:g} s)"
            )
            await asyncio.sleep(0.05)
        assert placed[0].state is domain.OrderState.CONFIRMED


async def test_only_the_owner_sees_or_cancels_an_order(orders: OrderServiceStub) -> None:
    order = (await orders.CreateOrder(create("r1", ("SKU-TEA", 1)), metadata=ALICE)).order
    bob = user("bob")
    for call in (
        orders.GetOrder(rpc.GetOrderRequest(order_id=order.order_id), metadata=bob),
        orders.CancelOrder(rpc.CancelOrderRequest(order_id=order.order_id), metadata=bob),
    ):
        error = await rejected(call)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    assert (await orders.ListOrders(rpc.ListOrdersRequest(), metadata=bob)).orders == []


async def test_confirmed_orders_cannot_be_cancelled(orders: OrderServiceStub) -> None:
    order = (await orders.CreateOrder(create("r1", ("SKU-TEA", 1)), metadata=ALICE)).order
    error = await rejected(
        orders.CancelOrder(rpc.CancelOrderRequest(order_id=order.order_id), metadata=ALICE)
    )
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ORDER_ALREADY_CONFIRMED",
    )


async def test_cancelling_a_cancelled_order_is_harmless(orders: OrderServiceStub) -> None:
    error = await rejected(orders.CreateOrder(create("r1", ("SKU-NONE", 1)), metadata=ALICE))
    request = rpc.CancelOrderRequest(order_id=error.metadata["order_id"])
    order = (await orders.CancelOrder(request, metadata=ALICE)).order
    assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CANCELLED, "OUT_OF_STOCK")


async def test_list_orders_pages_newest_first(orders: OrderServiceStub) -> None:
    made = [
        (await orders.CreateOrder(create(f"r{n}", ("SKU-TEA", 1)), metadata=ALICE)).order.order_id
        for n in range(5)
    ]
    seen, token, pages = [], "", 0
    while True:
        page = await orders.ListOrders(
            rpc.ListOrdersRequest(page_size=2, page_token=token), metadata=ALICE
        )
        seen += [o.order_id for o in page.orders]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == made[::-1]
    assert pages == 3


async def test_an_orders_history_is_shown_to_its_owner_a_page_at_a_time(
    orders: OrderServiceStub,
) -> None:
    order = (await orders.CreateOrder(create("r1", ("SKU-TEA", 2)), metadata=ALICE)).order
    seen: list[rpc.OrderEvent] = []
    token, pages = "", 0
    while True:
        request = rpc.ListOrderEventsRequest(order_id=order.order_id, page_size=3, page_token=token)
        page = await orders.ListOrderEvents(request, metadata=ALICE)
        seen += page.events
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 2
    assert [e.sequence for e in seen] == [1, 2, 3, 4]
    assert [e.WhichOneof("fact") for e in seen] == [
        "order_placed",
        "order_reserved",
        "order_committing",
        "order_confirmed",
    ]
    assert [e.type for e in seen][::3] == [
        "shop.order.v1.OrderPlaced",
        "shop.order.v1.OrderConfirmed",
    ]
    assert seen[-1].order_confirmed.total == order.total
    assert seen[1].order_reserved.line_items == order.line_items
    assert seen[0].occur_time == order.create_time
    assert seen[-1].occur_time == order.update_time
    error = await rejected(
        orders.ListOrderEvents(
            rpc.ListOrderEventsRequest(order_id=order.order_id), metadata=user("bob")
        )
    )
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")


async def test_every_method_needs_a_caller(orders: OrderServiceStub) -> None:
    for call in (
        orders.CreateOrder(create("r1", ("SKU-TEA", 1))),
        orders.GetOrder(rpc.GetOrderRequest(order_id="x")),
        orders.ListOrders(rpc.ListOrdersRequest()),
        orders.ListOrderEvents(rpc.ListOrderEventsRequest(order_id="x")),
        orders.CancelOrder(rpc.CancelOrderRequest(order_id="x")),
    ):
        error = await rejected(call)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (create("", ("SKU-TEA", 1)), ["request_id"]),
        (create("r 1", ("SKU-TEA", 1)), ["request_id"]),
        (create("x" * 65, ("SKU-TEA", 1)), ["request_id"]),
        (create("r1"), ["line_items"]),
        (create("r1", *[(f"SKU-{n}", 1) for n in range(51)]), ["line_items"]),
        (create("r1", ("", 1)), ["line_items[0].sku"]),
        (create("r1", ("SKU-TEA", 1), ("SKU-TEA", 2)), ["line_items[1].sku"]),
        (create("r1", ("SKU-TEA", 0)), ["line_items[0].quantity"]),
        (create("r1", ("SKU-TEA", -1)), ["line_items[0].quantity"]),
        (create("r1", ("SKU-TEA", 1001)), ["line_items[0].quantity"]),
        (create("", ("bad sku", 0)), ["request_id", "line_items[0].sku", "line_items[0].quantity"]),
    ],
)
async def test_create_order_validation(
    orders: OrderServiceStub, request_: rpc.CreateOrderRequest, fields: list[str]
) -> None:
    error = await rejected(orders.CreateOrder(request_, metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [v.field for v in error.violations] == fields
    assert (await orders.ListOrders(rpc.ListOrdersRequest(), metadata=ALICE)).orders == []


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("GetOrder", "order_id"),
        ("CancelOrder", "order_id"),
        ("ListOrders:size", "page_size"),
        ("ListOrders:token", "page_token"),
        ("ListOrderEvents:id", "order_id"),
        ("ListOrderEvents:size", "page_size"),
        ("ListOrderEvents:token", "page_token"),
    ],
)
async def test_other_validation(orders: OrderServiceStub, call: str, field: str) -> None:
    requests = {
        "GetOrder": (orders.GetOrder, rpc.GetOrderRequest(order_id="")),
        "CancelOrder": (orders.CancelOrder, rpc.CancelOrderRequest(order_id="a.b")),
        "ListOrders:size": (orders.ListOrders, rpc.ListOrdersRequest(page_size=-1)),
        "ListOrders:token": (
            orders.ListOrders,
            rpc.ListOrdersRequest(page_token="djE6eHl6"),
        ),  # "v1:xyz"
        "ListOrderEvents:id": (orders.ListOrderEvents, rpc.ListOrderEventsRequest(order_id="a b")),
        "ListOrderEvents:size": (
            orders.ListOrderEvents,
            rpc.ListOrderEventsRequest(order_id="o1", page_size=101),
        ),
        "ListOrderEvents:token": (
            orders.ListOrderEvents,
            rpc.ListOrderEventsRequest(order_id="o1", page_token="djE6eHl6"),
        ),
    }
    method, request = requests[call]
    error = await rejected(method(request, metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [v.field for v in error.violations] == [field]


async def test_unknown_order_is_not_found(orders: OrderServiceStub) -> None:
    error = await rejected(orders.GetOrder(rpc.GetOrderRequest(order_id="nope"), metadata=ALICE))
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "ORDER_NOT_FOUND",
        {"order_id": "nope"},
    )


async def test_the_saga_asks_payment_to_hold_the_money_for_its_authorization_seconds(
    payment_served: Served,
) -> None:
    """Participants send authorization_duration; OrderConfig.authorization_seconds (what
    service.py passes) is hold + park_after + margin."""
    config = OrderConfig(
        payment_target=payment_served.target,
        hold_seconds=60,
        park_after_seconds=120,
        authorization_margin_seconds=30,
    )
    assert config.authorization_seconds == 210
    participants = GrpcParticipants(
        config.inventory_target,
        config.payment_target,
        timeout=5,
        authorization_seconds=config.authorization_seconds,
    )
    order = domain.Order(
        order_id="o-ttl",
        user_id="alice",
        request_id="r1",
        items=(domain.LineItem("SKU-TEA", 1, 450, "USD"),),
        state=domain.OrderState.PENDING,
        cancel_reason="",
        total_minor=450,
        currency="USD",
        created_at=0.0,
        updated_at=0.0,
        seq=1,
    )
    try:
        await participants.authorize(order)
    finally:
        await participants.close()
    payment = (
        await PaymentServiceStub(payment_served.channel).GetPayment(
            payment_rpc.GetPaymentRequest(order_id="o-ttl"), metadata=ALICE
        )
    ).payment
    assert payment.expire_time.ToSeconds() - payment.create_time.ToSeconds() == 210
