"""The typed Python SDK (clients/python, betterproto2) against the live system through
Envoy: dataclass messages, a token and a deadline on every call, error reasons."""

from __future__ import annotations

import grpc
import pytest

from shopmesh.system import System
from shopmesh_sdk import connect, inventory, order, payment, shop_error


def test_place_and_read_an_order(system: System) -> None:
    with connect(system.public_target, system.token("alice")) as shop:
        placed = shop.orders.create_order(
            order.CreateOrderRequest(
                request_id="sdk-1", line_items=[order.LineItem(sku="SKU-TEA", quantity=2)]
            )
        ).order
        assert placed is not None
        assert placed.state == order.OrderState.CONFIRMED
        assert placed.total is not None and placed.total.amount_minor == 900
        got = shop.orders.get_order(order.GetOrderRequest(order_id=placed.order_id)).order
        assert got == placed
        product = shop.inventory.get_product(inventory.GetProductRequest(sku="SKU-TEA")).product
        assert product is not None and product.sku == "SKU-TEA"
        account = shop.payment.get_account(payment.GetAccountRequest(user_id="alice")).account
        assert account is not None and account.user_id == "alice"


def test_errors_carry_their_reason(system: System) -> None:
    with connect(system.public_target, system.token("alice")) as shop:
        with pytest.raises(grpc.RpcError) as raised:
            shop.orders.create_order(
                order.CreateOrderRequest(
                    request_id="sdk-2", line_items=[order.LineItem(sku="SKU-TEA", quantity=0)]
                )
            )
        error = shop_error(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert [field for field, _ in error.field_violations] == ["line_items[0].quantity"]


def test_a_bad_token_is_unauthenticated(system: System) -> None:
    with (
        connect(system.public_target, "not-a-token") as shop,
        pytest.raises(grpc.RpcError) as raised,
    ):
        shop.inventory.get_product(inventory.GetProductRequest(sku="SKU-TEA"))
    assert shop_error(raised.value).code == grpc.StatusCode.UNAUTHENTICATED
