"""InventoryService over gRPC: check the request, call the store, encode the answer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeAlias

import grpc
from google.protobuf import timestamp_pb2

from services.common import pagination
from services.common.errors import Violations
from services.common.identity import caller, require_admin
from services.common.validation import check_id
from services.inventory import domain
from services.inventory.store import InventoryStore
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_service_pb2 as rpc
from shop.inventory.v1 import inventory_service_pb2_grpc
from shop.money.v1 import money_pb2

Context: TypeAlias = grpc.aio.ServicerContext


class InventoryServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    def __init__(self, store: InventoryStore) -> None:
        self._store = store

    async def GetProduct(
        self, request: rpc.GetProductRequest, context: Context
    ) -> rpc.GetProductResponse:
        violations = Violations()
        _check_sku(violations, "sku", request.sku)
        violations.raise_if_any()
        return rpc.GetProductResponse(product=_product(self._store.product(request.sku)))

    async def ListProducts(
        self, request: rpc.ListProductsRequest, context: Context
    ) -> rpc.ListProductsResponse:
        violations = Violations()
        size = pagination.page_size(request.page_size, violations)
        after = pagination.decode_token(request.page_token, violations)
        violations.raise_if_any()
        page = self._store.products(after, size + 1)
        more = len(page) > size
        page = page[:size]
        return rpc.ListProductsResponse(
            products=[_product(p) for p in page],
            next_page_token=pagination.encode_token(page[-1].sku) if more else "",
        )

    async def ReserveStock(
        self, request: rpc.ReserveStockRequest, context: Context
    ) -> rpc.ReserveStockResponse:
        who = caller(context)
        violations = Violations()
        check_id(violations, "order_id", request.order_id)
        items = _check_items(violations, request.items)
        hold = domain.DEFAULT_HOLD_SECONDS
        if request.HasField("hold_duration"):
            hold = request.hold_duration.ToTimedelta().total_seconds()
            violations.check(
                domain.MIN_HOLD_SECONDS <= hold <= domain.MAX_HOLD_SECONDS,
                "hold_duration",
                "must be 1 second to 1 hour",
            )
        violations.raise_if_any()
        found = self._store.reserve(request.order_id, who.user_id, items, hold, time.time())
        return rpc.ReserveStockResponse(reservation=_reservation(found))

    async def GetReservation(
        self, request: rpc.GetReservationRequest, context: Context
    ) -> rpc.GetReservationResponse:
        who = caller(context)
        _check_order_id(request.order_id)
        owner = None if who.is_admin else who.user_id
        return rpc.GetReservationResponse(
            reservation=_reservation(self._store.reservation(request.order_id, owner))
        )

    async def CommitReservation(
        self, request: rpc.CommitReservationRequest, context: Context
    ) -> rpc.CommitReservationResponse:
        who = caller(context)
        _check_order_id(request.order_id)
        found = self._store.commit(request.order_id, who.user_id, time.time())
        return rpc.CommitReservationResponse(reservation=_reservation(found))

    async def ReleaseReservation(
        self, request: rpc.ReleaseReservationRequest, context: Context
    ) -> rpc.ReleaseReservationResponse:
        who = caller(context)
        _check_order_id(request.order_id)
        found = self._store.release(request.order_id, who.user_id, time.time())
        return rpc.ReleaseReservationResponse(reservation=_reservation(found))

    async def RestockProduct(
        self, request: rpc.RestockProductRequest, context: Context
    ) -> rpc.RestockProductResponse:
        require_admin(caller(context))
        violations = Violations()
        _check_sku(violations, "sku", request.sku)
        violations.check(
            0 < request.quantity <= domain.MAX_RESTOCK,
            "quantity",
            f"must be 1..{domain.MAX_RESTOCK}",
        )
        check_id(violations, "request_id", request.request_id)
        violations.raise_if_any()
        product = self._store.restock(request.sku, request.quantity, request.request_id)
        return rpc.RestockProductResponse(product=_product(product))


def _check_sku(violations: Violations, field: str, sku: str) -> bool:
    return violations.check(
        domain.SKU_PATTERN.fullmatch(sku) is not None,
        field,
        "must be 1 to 64 upper-case letters, digits or '-', starting with a letter or digit",
    )


def _check_order_id(order_id: str) -> None:
    violations = Violations()
    check_id(violations, "order_id", order_id)
    violations.raise_if_any()


def _check_items(
    violations: Violations, items: Sequence[pb.ReservationItem]
) -> tuple[domain.Item, ...]:
    violations.check(
        0 < len(items) <= domain.MAX_ITEMS, "items", f"must hold 1 to {domain.MAX_ITEMS} items"
    )
    seen: set[str] = set()
    for index, item in enumerate(items[: domain.MAX_ITEMS]):
        if _check_sku(violations, f"items[{index}].sku", item.sku):
            violations.check(item.sku not in seen, f"items[{index}].sku", "is listed twice")
            seen.add(item.sku)
        violations.check(
            0 < item.quantity <= domain.MAX_QUANTITY,
            f"items[{index}].quantity",
            f"must be 1..{domain.MAX_QUANTITY}",
        )
    return tuple(domain.Item(i.sku, i.quantity) for i in items)


def _money(amount_minor: int, currency: str) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=amount_minor)


def _product(p: domain.Product) -> pb.Product:
    return pb.Product(
        sku=p.sku,
        name=p.name,
        unit_price=_money(p.price_minor, p.currency),
        available_quantity=p.available,
        held_quantity=p.held,
        sold_quantity=p.sold,
    )


def _reservation(r: domain.Reservation) -> pb.Reservation:
    expire = timestamp_pb2.Timestamp()
    expire.FromNanoseconds(int(r.expire_at * 1e9))
    return pb.Reservation(
        order_id=r.order_id,
        user_id=r.user_id,
        items=[
            pb.ReservationItem(
                sku=i.sku, quantity=i.quantity, unit_price=_money(i.price_minor, i.currency)
            )
            for i in r.items
        ],
        state=f"RESERVATION_STATE_{r.state.value}",
        expire_time=expire,
    )
