"""Product names from inventory's GetProduct, for the read model's rows (asked once per
SKU: the consumer keeps what it learns in product_names)."""

from __future__ import annotations

import grpc

from services.common.tls import CertificateFiles, ReloadingChannel
from shop.inventory.v1 import inventory_service_pb2, inventory_service_pb2_grpc


class InventoryNames:
    """`Names` over gRPC: GetProduct, with a deadline; "" for a SKU inventory does not
    have; anything else raises, so the batch is retried later."""

    def __init__(
        self,
        target: str,
        timeout_seconds: float,
        tls_files: CertificateFiles | None = None,
        upstream_name: str = "gateway",
    ) -> None:
        """`tls_files`: call with mutual TLS, with this certificate, and accept only a
        server whose certificate names `upstream_name`; None: plaintext."""
        self._channel = ReloadingChannel(
            target, inventory_service_pb2_grpc.InventoryServiceStub, tls_files, upstream_name
        )
        self._timeout = timeout_seconds

    async def name(self, sku: str) -> str:
        try:
            response = await self._channel.stub().GetProduct(
                inventory_service_pb2.GetProductRequest(sku=sku), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise
        return str(response.product.name)

    async def close(self) -> None:
        await self._channel.close()
