"""The gateway's rate limits (gateway.envoy_config.Limits), against the real Envoy: a bucket
per verified user for every call and a smaller one for CreateOrder, one bucket for the
whole public listener, one for each health route. A refused call is HTTP 429 or gRPC
RESOURCE_EXHAUSTED with retry-after, before any service sees it. Each test sets the limits
it is about, with refills slow enough (a token per 50-100 s) that none comes back during
the test."""

from __future__ import annotations

import uuid
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_health.v1.health_pb2_grpc import HealthStub

from gateway.envoy_config import UNTHROTTLED, Limits
from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as rpc
from shop.order.v1.order_service_pb2_grpc import OrderServiceStub
from shopmesh.system import System
from tests.helpers import record_fault
from tests.system_helpers import SystemFactory, bearer, direct_client, rest

# The old default of Envoy's max_dynamic_descriptors: an LRU of 20 users.
ENVOY_DEFAULT_USERS_TRACKED = 20


def order_request() -> rpc.CreateOrderRequest:
    return rpc.CreateOrderRequest(
        request_id=uuid.uuid4().hex, line_items=[order_pb2.LineItem(sku="SKU-TEA", quantity=1)]
    )


def grpc_create(system: System, user: str) -> tuple[grpc.StatusCode, dict[str, str]]:
    """CreateOrder over gRPC through Envoy: its code and its metadata (initial and trailing)."""
    with grpc.insecure_channel(system.public_target) as channel:
        try:
            response, call = OrderServiceStub(channel).CreateOrder.with_call(
                order_request(), metadata=bearer(system.token(user)), timeout=15
            )
        except grpc.RpcError as error:
            metadata = (*(error.initial_metadata() or ()), *(error.trailing_metadata() or ()))
            return error.code(), {m.key: str(m.value) for m in metadata}
        assert response.order.state == order_pb2.ORDER_STATE_CONFIRMED, response
        return grpc.StatusCode.OK, {m.key: str(m.value) for m in call.initial_metadata()}


def rest_create(system: System, user: str) -> tuple[int, dict[str, str]]:
    body = {"request_id": uuid.uuid4().hex, "line_items": [{"sku": "SKU-TEA", "quantity": 1}]}
    answer = rest(system, "POST", "/v1/orders", system.token(user), body=body)
    assert answer.status in (200, 429), answer
    return answer.status, answer.headers


def list_orders(system: System, user: str) -> int:
    return rest(system, "GET", "/v1/orders", system.token(user)).status


def assert_retry_after(headers: dict[str, str]) -> None:
    assert int(headers["retry-after"]) >= 1, headers


def test_a_user_over_the_order_rate_is_refused_while_another_users_orders_succeed(
    make_system: SystemFactory,
) -> None:
    system = make_system(
        envoy_limits=Limits(
            user_orders_per_second=0.01,
            user_order_burst=3,
            user_requests_per_second=0.02,
            user_request_burst=20,
        )
    )
    # rich places orders as fast as he can: his burst of 3 goes through, then every
    # CreateOrder is refused at the gateway, over gRPC and over REST alike ...
    grpc_answers = [grpc_create(system, "rich") for _ in range(6)]
    assert [code for code, _ in grpc_answers] == [grpc.StatusCode.OK] * 3 + [
        grpc.StatusCode.RESOURCE_EXHAUSTED
    ] * 3
    for _, metadata in grpc_answers[3:]:
        assert_retry_after(metadata)
        assert metadata["x-ratelimit-limit"] == "3", metadata
    status, headers = rest_create(system, "rich")
    assert status == 429
    assert_retry_after(headers)
    assert headers["x-ratelimit-remaining"] == "0", headers
    # ... while alice, in the same second, places each of hers.
    assert [grpc_create(system, "alice")[0] for _ in range(2)] == [grpc.StatusCode.OK] * 2
    assert rest_create(system, "alice")[0] == 200
    # Other calls of rich's still pass (their bucket is not the order one), and the refused
    # CreateOrders never reached the order service.
    assert list_orders(system, "rich") == 200
    client = direct_client(system)
    try:
        assert len(client.list_orders("rich")) == 3
    finally:
        client.close()
    record_fault("one user over the order rate (RESOURCE_EXHAUSTED / 429)", {"ok": 6, "failed": 4})


@pytest.mark.parametrize("users_tracked", [ENVOY_DEFAULT_USERS_TRACKED, Limits().max_users_tracked])
def test_an_exhausted_user_stays_limited_after_24_other_users(
    make_system: SystemFactory, users_tracked: int
) -> None:
    """Envoy keeps a bucket per user in an LRU: with its old default of 20, the 21st user
    pushes the oldest out, who comes back with a full bucket. The default holds them all."""
    system = make_system(
        envoy_limits=Limits(
            user_requests_per_second=0.01, user_request_burst=2, max_users_tracked=users_tracked
        )
    )
    assert [list_orders(system, "user-0") for _ in range(3)] == [200, 200, 429]
    assert [list_orders(system, f"user-{n}") for n in range(1, 25)] == [200] * 24
    again = list_orders(system, "user-0")
    if users_tracked == ENVOY_DEFAULT_USERS_TRACKED:
        assert again == 200, "Envoy's LRU forgot nobody: this test cannot tell the cases apart"
    else:
        assert again == 429


def test_the_listener_bucket_limits_everyone_once_exceeded(make_system: SystemFactory) -> None:
    system = make_system(
        envoy_limits=replace(
            UNTHROTTLED, listener_requests_per_second=0.01, listener_request_burst=5
        )
    )
    assert [list_orders(system, "alice") for _ in range(6)] == [200] * 5 + [429]
    # Every other caller is refused too, before its token is even read ...
    assert list_orders(system, "bob") == 429
    no_token = rest(system, "GET", "/v1/orders")
    assert no_token.status == 429, no_token
    assert_retry_after(no_token.headers)
    assert grpc_create(system, "rich")[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # ... but the health routes have their own buckets.
    assert rest(system, "GET", "/healthz").status == 200


def test_health_is_not_limited_per_user_but_has_a_bucket_of_its_own(
    make_system: SystemFactory,
) -> None:
    system = make_system(
        envoy_limits=Limits(
            user_requests_per_second=0.01,
            user_request_burst=1,
            health_requests_per_second=0.01,
            health_request_burst=10,
        )
    )
    assert [list_orders(system, "alice") for _ in range(2)] == [200, 429]
    # alice is out of tokens, yet her health calls (her token sent along) all pass: a
    # health route reads no token, so there is no user to limit.
    token = system.token("alice")
    assert [rest(system, "GET", "/healthz", token).status for _ in range(10)] == [200] * 10
    with grpc.insecure_channel(system.public_target) as channel:
        health = HealthStub(channel)
        for _ in range(10):
            answer = health.Check(HealthCheckRequest(), metadata=bearer(token), timeout=5)
            assert answer.status == HealthCheckResponse.SERVING
        # Past its own bucket, health is refused too; the API's users do not notice.
        with pytest.raises(grpc.RpcError) as refused:
            health.Check(HealthCheckRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rest(system, "GET", "/healthz").status == 429
    assert list_orders(system, "bob") == 200
