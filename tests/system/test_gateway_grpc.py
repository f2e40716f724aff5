"""gRPC through Envoy's public listener with grpcurl (-protoset, token header)."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_health.v1.health_pb2_grpc import HealthStub

from shopmesh.system import System
from shopmesh.tools import REPO
from tests.helpers import run_command

GRPCURL = shutil.which("grpcurl", path=str(pathlib.Path(sys.executable).parent))
PROTOSET = str(REPO / "gen" / "descriptor.binpb")


def grpcurl(
    system: System, token: str | None, method: str, body: str = "{}"
) -> subprocess.CompletedProcess[str]:
    assert GRPCURL is not None
    auth = ["-H", f"authorization: Bearer {token}"] if token else []
    return run_command(
        [
            GRPCURL,
            "-plaintext",
            "-protoset",
            PROTOSET,
            *auth,
            "-d",
            body,
            system.public_target,
            method,
        ],
        expect=None,
        timeout=30,
    )


def test_one_call_per_service_through_envoy(system: System) -> None:
    token = system.token("alice")
    product = grpcurl(
        system, token, "shop.inventory.v1.InventoryService/GetProduct", '{"sku": "SKU-TEA"}'
    )
    assert product.returncode == 0, product.stderr
    assert json.loads(product.stdout)["product"]["sku"] == "SKU-TEA"

    order = grpcurl(
        system,
        token,
        "shop.order.v1.OrderService/CreateOrder",
        '{"request_id": "grpc-1", "line_items": [{"sku": "SKU-TEA", "quantity": 1}]}',
    )
    assert order.returncode == 0, order.stderr
    assert json.loads(order.stdout)["order"]["state"] == "ORDER_STATE_CONFIRMED"

    account = grpcurl(
        system, token, "shop.payment.v1.PaymentService/GetAccount", '{"user_id": "alice"}'
    )
    assert account.returncode == 0, account.stderr
    assert json.loads(account.stdout)["account"]["userId"] == "alice"


def test_an_error_keeps_its_details_through_envoy(system: System) -> None:
    failed = grpcurl(
        system,
        system.token("alice"),
        "shop.order.v1.OrderService/CreateOrder",
        '{"request_id": "grpc-2", "line_items": [{"sku": "SKU-TEA", "quantity": 0}]}',
    )
    assert failed.returncode == 64 + 3, failed.stderr
    assert '"reason":"INVALID_REQUEST"' in failed.stderr
    assert '"field":"line_items[0].quantity"' in failed.stderr


def test_grpc_without_a_token_is_unauthenticated(system: System) -> None:
    failed = grpcurl(system, None, "shop.order.v1.OrderService/ListOrders")
    assert failed.returncode == 64 + 16, failed.stderr  # UNAUTHENTICATED


def test_grpc_health_needs_no_token(system: System) -> None:
    with grpc.insecure_channel(system.public_target) as channel:
        answer = HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
    assert answer.status == HealthCheckResponse.SERVING
