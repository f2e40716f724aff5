"""Compatibility beyond the schema: a client generated from the released contract (the
commit recorded in api-release, tagged api/v1.0.0) calls today's system through Envoy
and still works. Its stubs are generated here, into a temporary folder, from the released
protos, and run in a separate interpreter that never sees today's generated code."""

from __future__ import annotations

import pathlib
import sys

from shopmesh.system import System
from shopmesh.tools import REPO
from tests.helpers import run_command

OLD_CLIENT = """
import sys
sys.path.insert(0, sys.argv[1])
import grpc
from shop.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc
from shop.inventory.v1 import inventory_service_pb2, inventory_service_pb2_grpc
assert order_pb2.__file__.startswith(sys.argv[1]), order_pb2.__file__
target, token = sys.argv[2], sys.argv[3]
auth = (("authorization", "Bearer " + token),)
with grpc.insecure_channel(target) as channel:
    orders = order_service_pb2_grpc.OrderServiceStub(channel)
    placed = orders.CreateOrder(order_service_pb2.CreateOrderRequest(
        request_id="old-client-1", line_items=[order_pb2.LineItem(sku="SKU-TEA", quantity=1)]),
        metadata=auth, timeout=15).order
    assert placed.state == order_pb2.ORDER_STATE_CONFIRMED, placed
    got = orders.GetOrder(order_service_pb2.GetOrderRequest(order_id=placed.order_id),
                          metadata=auth, timeout=5).order
    assert got.total.amount_minor == 450, got
    listed = orders.ListOrders(order_service_pb2.ListOrdersRequest(), metadata=auth, timeout=5)
    assert placed.order_id in [o.order_id for o in listed.orders]
    stock = inventory_service_pb2_grpc.InventoryServiceStub(channel).GetProduct(
        inventory_service_pb2.GetProductRequest(sku="SKU-TEA"), metadata=auth, timeout=5)
    assert stock.product.sku == "SKU-TEA"
print("old client OK")
"""


def released_commit() -> str:
    for line in (REPO / "api-release").read_text().splitlines():
        if line.startswith("commit="):
            return line.removeprefix("commit=")
    raise AssertionError("api-release names no commit")


def test_a_client_from_the_released_contract_still_works(
    system: System, tmp_path: pathlib.Path
) -> None:
    bin_dir = pathlib.Path(sys.executable).parent
    protos, stubs = tmp_path / "protos", tmp_path / "stubs"
    run_command([bin_dir / "buf", "export", f".git#ref={released_commit()}", "-o", protos])
    shop_files = sorted(str(p.relative_to(protos)) for p in protos.rglob("shop/**/*.proto"))
    assert shop_files
    stubs.mkdir()
    run_command(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{protos}",
            f"--python_out={stubs}",
            f"--grpc_python_out={stubs}",
            *shop_files,
        ]
    )
    ran = run_command(
        [sys.executable, "-c", OLD_CLIENT, str(stubs), system.public_target, system.token("alice")],
        cwd=tmp_path,
    )
    assert "old client OK" in ran.stdout
