"""Envoy's circuit breakers on the internal hop: a slow (stopped) payment instance and more
parallel orders than the breaker admits. The overflow shows in Envoy's stats, callers
get a clean UNAVAILABLE / 503 at once instead of queueing, and every order still ends
final with nothing leaked."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest

from gateway.envoy_config import UNTHROTTLED
from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as rpc
from shop.order.v1.order_service_pb2_grpc import OrderServiceStub
from shop.payment.v1 import payment_service_pb2 as pay
from shop.payment.v1.payment_service_pb2_grpc import PaymentServiceStub
from shopmesh.system import Ports, Settings, System
from shopmesh.system import start as start_system
from tests.helpers import Ledger, assert_invariants, record_fault, wait_for
from tests.system_helpers import ACCOUNTS, PRODUCTS, bearer, direct_client, rest, write_system_seed

pytestmark = pytest.mark.alone("a breaker's refusal is asserted at once (< 2 s)")

PARALLEL_ORDERS = 12


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("breaker")
    seed = write_system_seed(workdir / "seed.json")
    # Tight breakers; no rate limit in the way of the parallel orders.
    limits = replace(UNTHROTTLED, max_requests=2, max_pending_requests=1, max_retries=1)
    started = start_system(
        Settings(
            workdir=workdir,
            ports=Ports.free(),
            seed_file=seed,
            envoy_limits=limits,
            # Its burst of orders from one user is the point: the open-order quota is not.
            service_settings={
                "order": {
                    "step_retry_seconds": "20",
                    # Retries at once keep the breaker full: a slot a timed-out call frees
                    # is taken again before the test's own call can land in it (with 0.5 s
                    # a busy machine let it in once, to queue and end in a 504).
                    "max_backoff_seconds": "0.05",
                    "max_open_orders_per_user": "1000",
                }
            },
        )
    )
    yield started
    started.stop()


def overflows(system: System) -> int:
    """Requests the payment cluster's breakers refused (max_requests, then max_pending)."""
    stats = system.stats("cluster.payment.upstream_rq_")
    return stats.get("cluster.payment.upstream_rq_active_overflow", 0) + stats.get(
        "cluster.payment.upstream_rq_pending_overflow", 0
    )


def test_overflow_is_refused_at_once_and_every_order_ends_final(system: System) -> None:
    token = system.token("rich")
    payment = system.payment[0]
    payment.signal(signal.SIGSTOP)  # slow to the point of hung: requests pile up
    try:
        with (
            grpc.insecure_channel(system.public_target) as channel,
            ThreadPoolExecutor(PARALLEL_ORDERS) as pool,
        ):
            stub = OrderServiceStub(channel)

            def place(n: int) -> str:
                request = rpc.CreateOrderRequest(
                    request_id=f"breaker-{n}",
                    line_items=[order_pb2.LineItem(sku="SKU-TEA", quantity=1)],
                )
                try:
                    return order_pb2.OrderState.Name(
                        stub.CreateOrder(request, metadata=bearer(token), timeout=15).order.state
                    )
                except grpc.RpcError as error:
                    return str(error.code().name)

            placed = [pool.submit(place, n) for n in range(PARALLEL_ORDERS)]
            wait_for(lambda: overflows(system) > 0, "the payment breaker to overflow", timeout=15)

            # A caller of the saturated cluster is refused at once, cleanly.
            started = time.monotonic()
            answer = rest(system, "GET", "/v1/accounts/rich", token)
            assert answer.status == 503
            assert "overflow" in answer.text
            assert "Traceback" not in answer.text
            try:
                PaymentServiceStub(channel).GetAccount(
                    pay.GetAccountRequest(user_id="rich"), metadata=bearer(token), timeout=5
                )
                raise AssertionError("expected UNAVAILABLE")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 2  # no queueing behind the hung instance
            payment.signal(signal.SIGCONT)
            outcomes = [f.result(timeout=60) for f in placed]
    finally:
        payment.signal(signal.SIGCONT)
    assert overflows(system) > 0
    client = direct_client(system)
    wait_for(
        lambda: all(o.state != order_pb2.ORDER_STATE_PENDING for o in client.list_orders("rich")),
        "every order final",
    )
    assert len(client.list_orders("rich")) == PARALLEL_ORDERS
    assert_invariants(client, Ledger({s: q for s, (_, q) in PRODUCTS.items()}, dict(ACCOUNTS)))
    client.close()
    confirmed = outcomes.count("ORDER_STATE_CONFIRMED")
    record_fault(
        f"payment stopped, breaker overflow x{overflows(system)}",
        {"ok": confirmed, "failed": len(outcomes) - confirmed},
    )
