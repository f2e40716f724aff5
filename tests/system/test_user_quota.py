"""One user may not keep stock from everyone: through Envoy, against the real services."""

from __future__ import annotations

import threading
from collections import Counter

import grpc

from services.common.status import error_details
from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as orders
from shop.order.v1.order_service_pb2_grpc import OrderServiceStub
from shopmesh.check import check_databases
from shopmesh.system import System
from tests.helpers import record_fault, wait_for
from tests.system_helpers import SystemFactory, bearer

DECLINE_LIMIT = 3
HAMMERS = 4


def order_last_unit(stub: OrderServiceStub, token: str, request_id: str) -> str:
    """Orders SKU-LAST (one in stock): the order's state, or the error's reason."""
    try:
        response = stub.CreateOrder(
            orders.CreateOrderRequest(
                request_id=request_id,
                line_items=[order_pb2.LineItem(sku="SKU-LAST", quantity=1)],
            ),
            metadata=bearer(token),
            timeout=10,
        )
        return order_pb2.OrderState.Name(response.order.state)
    except grpc.RpcError as error:
        return error_details(error).reason or error.code().name


def hammer(system: System, stop: threading.Event, seen: Counter[str], n: int) -> None:
    token = system.token("carol")  # balance 0: every order of hers is declined
    with grpc.insecure_channel(system.public_target) as channel:
        stub = OrderServiceStub(channel)
        k = 0
        while not stop.is_set():
            k += 1
            seen[order_last_unit(stub, token, f"carol-{n}-{k}")] += 1


def test_a_buyer_with_money_gets_the_last_unit_while_a_penniless_user_hammers(
    make_system: SystemFactory,
) -> None:
    """carol, who cannot pay, orders the only unit of SKU-LAST from 4 threads without a
    pause. Each of her orders holds the unit until payment declines it; after
    `decline_limit` declines her orders are refused before any stock is held. alice, who can
    pay, then gets the unit. (Before the decline limit, carol made over a thousand doomed
    orders in 8 s, the unit was held most of the time, and alice's order failed
    OUT_OF_STOCK.)"""
    system = make_system(
        service_settings={"order": {"decline_limit": str(DECLINE_LIMIT)}},
    )
    stop, seen = threading.Event(), Counter[str]()
    threads = [
        threading.Thread(target=hammer, args=(system, stop, seen, n)) for n in range(HAMMERS)
    ]
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: seen["TOO_MANY_DECLINED_ORDERS"] >= 20 or None,
            "carol's orders to be refused before they hold stock",
        )
        with grpc.insecure_channel(system.public_target) as channel:
            outcome = order_last_unit(OrderServiceStub(channel), system.token("alice"), "alice-1")
        assert outcome == "ORDER_STATE_CONFIRMED", (outcome, seen)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    # What carol's hammering cost: a few declined orders, the ones in flight when the
    # limit was reached; none since.
    assert seen["INSUFFICIENT_FUNDS"] <= DECLINE_LIMIT + HAMMERS, seen
    report = check_databases(system.databases)
    assert report.ok and not report.parked, (report.problems, report.parked)
    record_fault(
        f"penniless user hammering the last unit from {HAMMERS} threads:"
        f" {seen['INSUFFICIENT_FUNDS']} declined, {seen['TOO_MANY_DECLINED_ORDERS']} refused",
        {"ok": 1, "failed": sum(seen.values()), "unknown": 0},
    )
