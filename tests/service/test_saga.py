"""The order saga against real processes: success, failures, faults, duplicates, crashes.

Every test ends by checking the saga's invariants through the services' APIs
(helpers.assert_invariants: every order final, no stock or money made or lost), and
after it every order's event log is replayed to its row (`new_databases` below).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_health.v1.health_pb2_grpc import HealthStub

from services.order.config import CRASH_POINTS
from shop.order.v1 import order_pb2 as pb
from shop.order.v1 import order_service_pb2 as rpc
from shop.payment.v1 import payment_pb2
from tests.helpers import Client, Ledger, assert_invariants, fails, record_fault, user, wait_for
from tests.stack import DatabaseFactory, Stack, StackFactory, logs_checked, read_rows, restart


@pytest.fixture
def new_databases(new_databases: DatabaseFactory) -> Iterator[DatabaseFactory]:
    """The session's databases, with every order's event log replayed to its row after
    the test (tests.stack.logs_checked)."""
    with logs_checked(new_databases) as databases:
        yield databases


def test_order_confirms_and_moves_stock_and_money(
    stack: tuple[Stack, Client], ledger: Ledger
) -> None:
    _, client = stack
    order = client.create_order("alice", "r1", [("SKU-TEA", 3), ("SKU-MUG", 1)])
    assert order.state == pb.ORDER_STATE_CONFIRMED
    assert order.total.amount_minor == 3 * 450 + 1299
    assert client.stock("SKU-TEA") == (97, 0, 3)
    assert client.balance("alice") == (100_000 - 2649, 0)
    assert_invariants(client, ledger)


def test_out_of_stock_charges_nothing_and_holds_nothing(
    stack: tuple[Stack, Client], ledger: Ledger
) -> None:
    _, client = stack
    error = fails(lambda: client.create_order("alice", "r1", [("SKU-TEA", 1), ("SKU-LAST", 2)]))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_STOCK")
    assert client.payment_of(error.metadata["order_id"]) is None
    assert client.stock("SKU-TEA") == (100, 0, 0)
    assert client.balance("alice") == (100_000, 0)
    assert_invariants(client, ledger)


def test_insufficient_funds_releases_the_stock(stack: tuple[Stack, Client], ledger: Ledger) -> None:
    _, client = stack
    error = fails(lambda: client.create_order("bob", "r1", [("SKU-MUG", 2)]))  # 2598 > 2000
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    order = client.get_order("bob", error.metadata["order_id"])
    assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CANCELLED, "INSUFFICIENT_FUNDS")
    assert client.stock("SKU-MUG") == (25, 0, 0)
    assert client.balance("bob") == (2000, 0)
    assert_invariants(client, ledger)


def test_payment_hung_cancels_the_order_once_it_answers(
    stack: tuple[Stack, Client], ledger: Ledger
) -> None:
    """Payment stopped (SIGSTOP): authorize times out until the retry budget (3 s) is spent,
    the saga compensates, and its void waits for payment; SIGCONT lets the order end."""
    services, client = stack
    services.payment.signal(signal.SIGSTOP)
    try:
        order = client.create_order("alice", "r1", [("SKU-MUG", 2)], timeout=5)
        assert order.state == pb.ORDER_STATE_PENDING
        assert client.stock("SKU-MUG")[1] in (0, 2)  # held until the compensation releases it
    finally:
        services.payment.signal(signal.SIGCONT)
    order = client.wait_final("alice", order.order_id)
    assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CANCELLED, "PAYMENT_UNAVAILABLE")
    assert client.stock("SKU-MUG") == (25, 0, 0)
    assert client.balance("alice") == (100_000, 0)
    assert_invariants(client, ledger)
    record_fault("payment hung (SIGSTOP) past the retry budget", {"ok": 1})


def test_payment_down_then_back_completes_the_order(
    make_stack: StackFactory, ledger: Ledger
) -> None:
    """Payment killed, with a retry budget long enough to outlast it: once payment is back
    (same port, same database) the order completes instead of being cancelled."""
    services, client = make_stack(
        call_timeout_seconds="1",
        step_retry_seconds="60",
        max_backoff_seconds="0.2",
        create_wait_seconds="1",
    )
    services.payment.kill()
    order = client.create_order("alice", "r1", [("SKU-TEA", 1)])
    assert order.state == pb.ORDER_STATE_PENDING
    services.payment = restart(services.payment)
    order = client.wait_final("alice", order.order_id)
    assert order.state == pb.ORDER_STATE_CONFIRMED
    assert_invariants(client, ledger)
    record_fault("payment killed (kill -9), restarted", {"ok": 1})


def test_user_cancels_an_order_stuck_on_payment(make_stack: StackFactory, ledger: Ledger) -> None:
    services, client = make_stack(
        call_timeout_seconds="0.5",
        step_retry_seconds="60",
        max_backoff_seconds="0.2",
        create_wait_seconds="1",
    )
    services.payment.kill()
    order = client.create_order("alice", "r1", [("SKU-MUG", 3)])
    assert order.state == pb.ORDER_STATE_PENDING
    client.order.CancelOrder(
        rpc.CancelOrderRequest(order_id=order.order_id), metadata=user("alice"), timeout=5
    )
    services.payment = restart(services.payment)
    order = client.wait_final("alice", order.order_id)
    assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CANCELLED, "CANCELLED_BY_USER")
    assert client.stock("SKU-MUG") == (25, 0, 0)
    assert_invariants(client, ledger)


def test_inventory_down_cancels_the_order(stack: tuple[Stack, Client], ledger: Ledger) -> None:
    services, client = stack
    services.inventory.kill()
    order = client.create_order("alice", "r1", [("SKU-TEA", 1)], timeout=5)
    # Compensation (release) also needs inventory: the order ends when it is back.
    services.inventory = restart(services.inventory)
    order = client.wait_final("alice", order.order_id)
    assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CANCELLED, "INVENTORY_UNAVAILABLE")
    assert_invariants(client, ledger)


def test_repeated_request_id_places_one_order(stack: tuple[Stack, Client], ledger: Ledger) -> None:
    _, client = stack
    first = client.create_order("alice", "r1", [("SKU-MUG", 2)])
    second = client.create_order("alice", "r1", [("SKU-MUG", 2)])
    assert second == first
    assert client.stock("SKU-MUG") == (23, 0, 2)
    assert client.balance("alice") == (100_000 - 2598, 0)
    assert_invariants(client, ledger)


def test_twenty_concurrent_duplicates_place_one_order(
    stack: tuple[Stack, Client], ledger: Ledger
) -> None:
    _, client = stack
    with ThreadPoolExecutor(20) as pool:
        results = list(
            pool.map(lambda _: client.create_order("alice", "dup", [("SKU-MUG", 2)]), range(20))
        )
    assert {r.order_id for r in results} == {results[0].order_id}
    assert {r.state for r in results} == {pb.ORDER_STATE_CONFIRMED}
    assert len(client.list_orders("alice")) == 1
    assert client.stock("SKU-MUG") == (23, 0, 2)  # one hold, committed once
    assert client.balance("alice") == (100_000 - 2598, 0)  # one capture
    assert_invariants(client, ledger)
    record_fault("20 concurrent duplicates of one request id", {"ok": 20})


def test_fifty_buyers_for_the_last_unit_one_wins(
    stack: tuple[Stack, Client], ledger: Ledger
) -> None:
    _, client = stack

    def buy(n: int) -> str:
        try:
            return pb.OrderState.Name(
                client.create_order("rich", f"buy-{n}", [("SKU-LAST", 1)]).state
            )
        except grpc.RpcError as error:
            return str(error.code().name)

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(buy, range(50)))
    assert outcomes.count("ORDER_STATE_CONFIRMED") == 1, outcomes
    assert outcomes.count("FAILED_PRECONDITION") == 49, outcomes
    assert client.stock("SKU-LAST") == (0, 0, 1)
    assert_invariants(client, ledger)
    record_fault("50 concurrent orders for the last unit", {"ok": 1, "failed": 49})


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_order_service_killed_mid_saga_recovers(
    make_stack: StackFactory, ledger: Ledger, crash_at: str
) -> None:
    """The order service kills itself (SIGKILL) at a saga step; restarted, it finishes the
    saga from its record, and stock and money balance with at most one capture."""
    services, client = make_stack(crash_at=crash_at, call_timeout_seconds="1")
    # during_compensation needs a compensation after an authorize attempt: bob can't pay.
    who, items = (
        ("bob", [("SKU-MUG", 2)])
        if crash_at == "during_compensation"
        else ("alice", [("SKU-MUG", 2)])
    )
    error = fails(lambda: client.create_order(who, "r1", items))
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert services.order.process.wait(10) == -signal.SIGKILL
    services.order = restart(services.order, crash_at="")
    placed = wait_for(lambda: client.list_orders(who), "the order to be listed")
    assert len(placed) == 1
    order = client.wait_final(who, placed[0].order_id)
    expected = pb.ORDER_STATE_CANCELLED if who == "bob" else pb.ORDER_STATE_CONFIRMED
    assert order.state == expected
    # A retry of the lost call returns the same order and does nothing twice.
    if who == "alice":
        assert client.create_order(who, "r1", items).order_id == order.order_id
    assert_invariants(client, ledger)
    record_fault(f"order service kill -9 at {crash_at}", {"unknown": 1})


def test_sigterm_turns_health_not_serving_then_exits(
    stack: tuple[Stack, Client], ledger: Ledger
) -> None:
    services, client = stack
    order = client.create_order("alice", "r1", [("SKU-TEA", 1)])
    with grpc.insecure_channel(services.order.target) as channel:
        watch = HealthStub(channel).Watch(HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == HealthCheckResponse.SERVING
        services.order.signal(signal.SIGTERM)
        assert next(watch).status == HealthCheckResponse.NOT_SERVING
    started = time.monotonic()
    assert services.order.process.wait(10) == 0
    assert time.monotonic() - started < 5
    services.order = restart(services.order)
    assert client.get_order("alice", order.order_id).state == pb.ORDER_STATE_CONFIRMED
    assert_invariants(client, ledger)


def test_a_hold_that_expired_during_a_crash_cancels_the_order(
    make_stack: StackFactory, ledger: Ledger
) -> None:
    """The order service dies after authorizing and stays down past the stock hold's TTL:
    on restart the commit finds the hold gone, so the saga voids the payment and cancels."""
    services, client = make_stack(crash_at="after_authorize", hold_seconds="1")
    fails(lambda: client.create_order("alice", "r1", [("SKU-MUG", 2)]))
    assert services.order.process.wait(10) == -signal.SIGKILL
    assert client.balance("alice") == (100_000 - 2598, 2598)  # authorized, not captured
    wait_for(lambda: client.stock("SKU-MUG") == (25, 0, 0), "the hold to expire")
    services.order = restart(services.order, crash_at="")
    order = client.wait_final("alice", client.list_orders("alice")[0].order_id)
    assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CANCELLED, "RESERVATION_EXPIRED")
    assert client.balance("alice") == (100_000, 0)
    assert_invariants(client, ledger)


def test_an_authorization_that_expired_during_a_crash_cancels_the_order(
    make_stack: StackFactory, ledger: Ledger
) -> None:
    """The order service asks payment to hold the money for hold + park_after + margin
    (here 1 + 2 + 0.5 s), dies after authorizing and stays down past both TTLs: payment
    gives the money back by itself, and on restart the commit finds the hold gone, so the
    saga voids (nothing left to give back) and releases: CANCELLED, nothing lost."""
    services, client = make_stack(
        crash_at="after_authorize",
        hold_seconds="1",
        park_after_seconds="2",
        authorization_margin_seconds="0.5",
    )
    fails(lambda: client.create_order("alice", "r1", [("SKU-MUG", 2)]))
    assert services.order.process.wait(10) == -signal.SIGKILL
    # The service is down: read its database.
    [row] = read_rows(services.databases["order"], "SELECT order_id FROM orders")
    order_id = row["order_id"]
    authorized = client.payment_of(order_id)
    assert authorized is not None and authorized.state == payment_pb2.PAYMENT_STATE_AUTHORIZED
    lifetime = authorized.expire_time.ToMilliseconds() - authorized.create_time.ToMilliseconds()
    assert lifetime == 3500  # hold_seconds + park_after_seconds + authorization_margin_seconds
    wait_for(lambda: client.balance("alice") == (100_000, 0), "the authorization to expire")
    wait_for(lambda: client.stock("SKU-MUG") == (25, 0, 0), "the hold to expire")
    services.order = restart(services.order, crash_at="")
    order = client.wait_final("alice", order_id)
    assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CANCELLED, "RESERVATION_EXPIRED")
    expired = client.payment_of(order_id)
    assert expired is not None and expired.state == payment_pb2.PAYMENT_STATE_EXPIRED
    assert client.balance("alice") == (100_000, 0)
    assert_invariants(client, ledger)
    record_fault("order down past its authorization's TTL after authorize", {"unknown": 1})


def test_an_authorization_expired_before_the_pivot_cancels_the_order(
    make_stack: StackFactory, ledger: Ledger
) -> None:
    """Payment authorizes but every reply is lost, so the saga keeps asking again (the
    call is idempotent) until the authorization (2 s here) has expired: the repeat answers
    PAYMENT_EXPIRED, a final failure before the pivot, as an expired stock hold is, and the
    order is cancelled with it: the void moves nothing, the release gives the stock back."""
    services, client = make_stack(
        call_timeout_seconds="1",
        step_retry_seconds="20",
        max_backoff_seconds="0.5",
        hold_seconds="1",
        park_after_seconds="1",
        authorization_margin_seconds="0",
    )
    services.payment.stop()
    services.payment = restart(services.payment, lose_replies="AuthorizePayment:1000")
    error = fails(lambda: client.create_order("alice", "r1", [("SKU-MUG", 2)]))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_EXPIRED")
    order = client.get_order("alice", error.metadata["order_id"])
    assert (order.state, order.cancel_reason) == (pb.ORDER_STATE_CANCELLED, "PAYMENT_EXPIRED")
    expired = client.payment_of(order.order_id)
    assert expired is not None and expired.state == payment_pb2.PAYMENT_STATE_EXPIRED
    assert client.stock("SKU-MUG") == (25, 0, 0)
    assert client.balance("alice") == (100_000, 0)
    assert_invariants(client, ledger)
    record_fault("authorize replies lost until the authorization expired", {"failed": 1})
