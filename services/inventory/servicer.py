"""InventoryService over gRPC: check the request, call the store, encode the answer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from services.common import pagination, validation
from services.common.convert import money, timestamp
from services.common.identity import caller, require_admin
from services.inventory import domain
from services.inventory.store import InventoryStore
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_service_pb2 as rpc
from shop.inventory.v1 import inventory_service_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext


class InventoryServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    def __init__(self, store: InventoryStore) -> None:
        self._store = store

    async def GetProduct(
        self, request: rpc.GetProductRequest, context: Context
    ) -> rpc.GetProductResponse:
        validation.require_valid(request)
        product = await self._store.product(request.sku)
        return rpc.GetProductResponse(product=_product_to_proto(product))

    async def ListProducts(
        self, request: rpc.ListProductsRequest, context: Context
    ) -> rpc.ListProductsResponse:
        violations = validation.violations(request)
        size = pagination.page_size(request.page_size)
        after = pagination.decode_token(request.page_token, violations)
        violations.raise_if_any()
        page = await self._store.products(after, size + 1)
        more = len(page) > size
        page = page[:size]
        return rpc.ListProductsResponse(
            products=[_product_to_proto(p) for p in page],
            next_page_token=pagination.encode_token(page[-1].sku) if more else "",
        )

    async def ReserveStock(
        self, request: rpc.ReserveStockRequest, context: Context
    ) -> rpc.ReserveStockResponse:
        who = caller(context)
        violations = validation.violations(request)
        validation.check_each_sku_once(violations, rpc.ReserveStockRequest, "items", request.items)
        violations.raise_if_any()
        items = tuple(domain.Item(i.sku, i.quantity) for i in request.items)
        hold = domain.DEFAULT_HOLD_SECONDS
        if request.HasField("hold_duration"):
            hold = request.hold_duration.ToTimedelta().total_seconds()
        found = await self._store.reserve(request.order_id, who.user_id, items, hold)
        return rpc.ReserveStockResponse(reservation=_reservation_to_proto(found))

    async def GetReservation(
        self, request: rpc.GetReservationRequest, context: Context
    ) -> rpc.GetReservationResponse:
        who = caller(context)
        validation.require_valid(request)
        owner = None if who.is_admin else who.user_id
        found = await self._store.reservation(request.order_id, owner)
        return rpc.GetReservationResponse(reservation=_reservation_to_proto(found))

    async def CommitReservation(
        self, request: rpc.CommitReservationRequest, context: Context
    ) -> rpc.CommitReservationResponse:
        who = caller(context)
        validation.require_valid(request)
        found = await self._store.commit(request.order_id, who.user_id)
        return rpc.CommitReservationResponse(reservation=_reservation_to_proto(found))

    async def ReleaseReservation(
        self, request: rpc.ReleaseReservationRequest, context: Context
    ) -> rpc.ReleaseReservationResponse:
        who = caller(context)
        validation.require_valid(request)
        found = await self._store.release(request.order_id, who.user_id)
        return rpc.ReleaseReservationResponse(reservation=_reservation_to_proto(found))

    async def RestockProduct(
        self, request: rpc.RestockProductRequest, context: Context
    ) -> rpc.RestockProductResponse:
        require_admin(caller(context))
        validation.require_valid(request)
        product = await self._store.restock(request.sku, request.quantity, request.request_id)
        return rpc.RestockProductResponse(product=_product_to_proto(product))


def _product_to_proto(p: domain.Product) -> pb.Product:
    return pb.Product(
        sku=p.sku,
        name=p.name,
        unit_price=money(p.price_minor, p.currency),
        available_quantity=p.available,
        held_quantity=p.held,
        sold_quantity=p.sold,
    )


def _reservation_to_proto(r: domain.Reservation) -> pb.Reservation:
    return pb.Reservation(
        order_id=r.order_id,
        user_id=r.user_id,
        items=[
            pb.ReservationItem(
                sku=i.sku, quantity=i.quantity, unit_price=money(i.price_minor, i.currency)
            )
            for i in r.items
        ],
        state=f"RESERVATION_STATE_{r.state.value}",
        expire_time=timestamp(r.expire_at),
    )
