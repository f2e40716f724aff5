"""Product names from inventory's GetProduct, for the read model's rows (asked once per
SKU: the consumer keeps what it learns in product_names)."""

from __future__ import annotations

import grpc

from shop.inventory.v1 import inventory_service_pb2, inventory_service_pb2_grpc


class InventoryNames:
    """`Names` over gRPC: GetProduct, with a deadline; "" for a SKU inventory does not
    have; anything else raises, so the batch is retried later."""

    def __init__(self, target: str, timeout_seconds: float) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = inventory_service_pb2_grpc.InventoryServiceStub(self._channel)
        self._timeout = timeout_seconds

    async def name(self, sku: str) -> str:
        try:
            response = await self._stub.GetProduct(
                inventory_service_pb2.GetProductRequest(sku=sku), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise
        return str(response.product.name)

    async def close(self) -> None:
        await self._channel.close()
