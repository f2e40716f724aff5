"""REST/JSON through Envoy's public listener, with real tokens, against the whole system.

Every order here runs its saga through Envoy's internal listener (the order service's
inventory and payment targets point at it).
"""

from __future__ import annotations

import json
import urllib.parse

import grpc
import pytest

from services.common.identity import ADMIN_SCOPE
from shopmesh.openapi import INTERNAL_METHODS
from shopmesh.system import System
from shopmesh.tools import REPO
from tests.system_helpers import rest

ORDER = {"request_id": "rest-1", "line_items": [{"sku": "SKU-TEA", "quantity": 2}]}


@pytest.fixture(scope="module")
def alice(system: System) -> str:
    return system.token("alice")


def test_create_get_and_list_an_order(system: System, alice: str) -> None:
    created = rest(system, "POST", "/v1/orders", alice, body=ORDER)
    assert created.status == 200, created.text
    order = created.body["order"]
    assert order["state"] == "ORDER_STATE_CONFIRMED"
    assert order["userId"] == "alice"
    assert order["total"] == {"currencyCode": "USD", "amountMinor": "900"}  # int64 as string
    assert order["lineItems"] == [
        {
            "sku": "SKU-TEA",
            "quantity": 2,
            "unitPrice": {"currencyCode": "USD", "amountMinor": "450"},
        }
    ]
    assert set(order) >= {"orderId", "requestId", "createTime", "updateTime", "cancelReason"}

    got = rest(system, "GET", f"/v1/orders/{order['orderId']}", alice)
    assert (got.status, got.body["order"]) == (200, order)

    listed = rest(system, "GET", "/v1/orders?page_size=10", alice)
    assert listed.status == 200
    assert order["orderId"] in [o["orderId"] for o in listed.body["orders"]]

    # The same request id again: the same order, nothing twice.
    again = rest(system, "POST", "/v1/orders", alice, body=ORDER)
    assert again.body["order"]["orderId"] == order["orderId"]


def test_an_orders_history_over_rest_is_its_owners_only(system: System, alice: str) -> None:
    created = rest(
        system,
        "POST",
        "/v1/orders",
        alice,
        body={"request_id": "rest-history", "line_items": [{"sku": "SKU-TEA", "quantity": 1}]},
    )
    assert created.status == 200, created.text
    order = created.body["order"]
    path = f"/v1/orders/{order['orderId']}/events"

    first = rest(system, "GET", f"{path}?page_size=2", alice)
    assert first.status == 200, first.text
    token = urllib.parse.quote(first.body["nextPageToken"], safe="")
    rest_of = rest(system, "GET", f"{path}?page_token={token}", alice)
    assert (rest_of.status, rest_of.body["nextPageToken"]) == (200, "")
    entries = first.body["events"] + rest_of.body["events"]
    assert [e["sequence"] for e in entries] == ["1", "2", "3", "4"]  # uint64 as string
    assert [e["type"] for e in entries] == [
        "shop.order.v1.OrderPlaced",
        "shop.order.v1.OrderReserved",
        "shop.order.v1.OrderCommitting",
        "shop.order.v1.OrderConfirmed",
    ]
    # Each fact decoded as JSON, under the field named after it.
    assert entries[0]["orderPlaced"]["lineItems"] == [{"sku": "SKU-TEA", "quantity": 1}]
    confirmed = entries[3]["orderConfirmed"]
    assert (confirmed["state"], confirmed["total"]) == ("ORDER_STATE_CONFIRMED", order["total"])
    assert (entries[0]["occurTime"], entries[3]["occurTime"]) == (
        order["createTime"],
        order["updateTime"],
    )

    bob = rest(system, "GET", path, system.token("bob"))
    assert bob.status == 404, bob.text
    assert bob.body["details"][0]["reason"] == "ORDER_NOT_FOUND"
    assert rest(system, "GET", path, None).status == 401  # no token


def test_stock_and_restock(system: System, alice: str) -> None:
    product = rest(system, "GET", "/v1/products/SKU-MUG", alice)
    assert product.status == 200
    assert product.body["product"]["availableQuantity"] == 50
    restock = {"quantity": 5, "request_id": "restock-1"}
    denied = rest(system, "POST", "/v1/products/SKU-MUG:restock", alice, body=restock)
    assert denied.status == 403
    assert denied.body["details"][0]["reason"] == "ADMIN_SCOPE_REQUIRED"
    admin = system.token("ops", "shop.admin")
    done = rest(system, "POST", "/v1/products/SKU-MUG:restock", admin, body=restock)
    assert done.status == 200, done.text
    assert done.body["product"]["availableQuantity"] == 55
    listed = rest(system, "GET", "/v1/products?page_size=2", alice)
    assert len(listed.body["products"]) == 2
    assert listed.body["nextPageToken"]


def test_a_bad_request_is_400_with_field_violations(system: System, alice: str) -> None:
    bad = {"request_id": "", "line_items": [{"sku": "SKU-TEA", "quantity": 0}]}
    answer = rest(system, "POST", "/v1/orders", alice, body=bad)
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.body["code"] == 3
    info, violations = answer.body["details"]
    assert info["reason"] == "INVALID_REQUEST"
    assert [v["field"] for v in violations["fieldViolations"]] == [
        "request_id",
        "line_items[0].quantity",
    ]


def test_error_statuses_map_to_http(system: System, alice: str) -> None:
    missing = rest(system, "GET", "/v1/orders/nope", alice)
    assert (missing.status, missing.body["details"][0]["reason"]) == (404, "ORDER_NOT_FOUND")

    reused = dict(ORDER, line_items=[{"sku": "SKU-TEA", "quantity": 3}])
    rest(system, "POST", "/v1/orders", alice, body=ORDER)
    conflict = rest(system, "POST", "/v1/orders", alice, body=reused)
    assert (conflict.status, conflict.body["details"][0]["reason"]) == (409, "REQUEST_ID_REUSED")

    broke = system.token("bob")
    poor = rest(
        system,
        "POST",
        "/v1/orders",
        broke,
        body={"request_id": "b1", "line_items": [{"sku": "SKU-MUG", "quantity": 2}]},
    )
    assert (poor.status, poor.body["details"][0]["reason"]) == (
        400,
        "INSUFFICIENT_FUNDS",
    )  # FAILED_PRECONDITION


def test_rest_responses_carry_no_grpc_headers(system: System, alice: str) -> None:
    for answer in (
        rest(system, "GET", "/v1/products/SKU-TEA", alice),
        rest(system, "GET", "/v1/orders/nope", alice),
    ):
        assert not [h for h in answer.headers if h.startswith("grpc-")], answer.headers


def test_unknown_query_parameters_and_paths_are_rejected(system: System, alice: str) -> None:
    assert rest(system, "GET", "/v1/products?colour=red", alice).status == 400
    assert rest(system, "GET", "/v1/nothing-here", alice).status == 404


def test_oversized_body_is_refused(system: System, alice: str) -> None:
    huge = {"request_id": "big", "line_items": [{"sku": "SKU-TEA", "quantity": 1}] * 5000}
    answer = rest(system, "POST", "/v1/orders", alice, body=huge)
    assert answer.status == 413


def test_health_needs_no_token_and_nothing_else_works_without_one(system: System) -> None:
    assert rest(system, "GET", "/healthz").status == 200
    for method, path in (("GET", "/v1/products"), ("GET", "/v1/orders"), ("POST", "/v1/orders")):
        assert rest(system, method, path, body={} if method == "POST" else None).status == 401


@pytest.mark.parametrize("method", sorted(INTERNAL_METHODS))
def test_saga_participant_methods_are_not_public(system: System, alice: str, method: str) -> None:
    """The participant calls exist only on the internal listener (the saga above used them)."""
    service, name = method.rsplit(".", 1)
    with grpc.insecure_channel(system.public_target) as channel:
        call = channel.unary_unary(f"/{service}/{name}")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"", metadata=(("authorization", f"Bearer {alice}"),), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    paths = {
        "ReserveStock": ("POST", "/v1/reservations"),
        "CommitReservation": ("POST", "/v1/reservations/o1:commit"),
        "ReleaseReservation": ("POST", "/v1/reservations/o1:release"),
        "AuthorizePayment": ("POST", "/v1/payments"),
        "CapturePayment": ("POST", "/v1/payments/o1:capture"),
        "VoidPayment": ("POST", "/v1/payments/o1:void"),
    }
    verb, path = paths[name]
    assert rest(system, verb, path, alice, body={}).status == 404
    document = json.loads((REPO / "docs" / "openapi.json").read_text())
    operations = {op["operationId"] for ops in document["paths"].values() for op in ops.values()}
    assert f"{service.rsplit('.', 1)[-1]}_{name}" not in operations


def test_parked_orders_are_listed_for_operators_only(system: System) -> None:
    admin = rest(system, "GET", "/v1/orders:parked", system.token("ops", ADMIN_SCOPE))
    assert (admin.status, admin.body) == (200, {"parkedOrders": [], "nextPageToken": ""})
    user = rest(system, "GET", "/v1/orders:parked", system.token("alice"))
    assert user.status == 403
    assert user.body["details"][0]["reason"] == "ADMIN_SCOPE_REQUIRED"
    resume = rest(
        system, "POST", "/v1/orders/nope:resume", system.token("ops", ADMIN_SCOPE), body={}
    )
    assert resume.status == 404
