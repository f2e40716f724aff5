"""The baseline inventory service: FastAPI over the same store as shopmesh's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel

from bench.baseline.common import caller, install_error_handler, open_store, seed_file
from services.common import validation
from services.common.errors import Violations
from services.inventory.domain import DEFAULT_HOLD_SECONDS, Item, Reservation
from services.inventory.store import InventoryStore
from shop.inventory.v1 import inventory_service_pb2 as rpc

store = open_store(InventoryStore)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if (seed := seed_file()) is not None:  # before the app answers: products to serve
        await store.seed(seed)
    yield


app = FastAPI(lifespan=lifespan)
install_error_handler(app)


class ItemIn(BaseModel):
    sku: str
    quantity: int


class ReserveIn(BaseModel):
    order_id: str
    items: list[ItemIn]
    hold_seconds: float = DEFAULT_HOLD_SECONDS


def reservation(r: Reservation) -> dict[str, Any]:
    return {
        "order_id": r.order_id,
        "state": r.state.value,
        "items": [
            {
                "sku": i.sku,
                "quantity": i.quantity,
                "price_minor": i.price_minor,
                "currency": i.currency,
            }
            for i in r.items
        ],
    }


@app.get("/v1/products/{sku}")
async def get_product(sku: str) -> dict[str, Any]:
    violations = Violations()
    validation.check_field(violations, rpc.GetProductRequest, "sku", sku)
    violations.raise_if_any()
    p = await store.product(sku)
    return {
        "sku": p.sku,
        "available": p.available,
        "held": p.held,
        "sold": p.sold,
        "price_minor": p.price_minor,
    }


@app.post("/v1/reservations")
async def reserve(body: ReserveIn, request: Request) -> dict[str, Any]:
    who = caller(request)
    # shopmesh's rules, on the body's fields (named as the contract's).
    violations = Violations()
    reserve_stock = rpc.ReserveStockRequest
    for field in ("order_id", "items"):
        validation.check_field(violations, reserve_stock, field, getattr(body, field))
    validation.check_each_sku_once(violations, reserve_stock, "items", body.items)
    violations.raise_if_any()
    items = [Item(i.sku, i.quantity) for i in body.items]
    return reservation(await store.reserve(body.order_id, who, items, body.hold_seconds))


@app.post("/v1/reservations/{order_id}:commit")
async def commit(order_id: str, request: Request) -> dict[str, Any]:
    return reservation(await store.commit(order_id, caller(request)))


@app.post("/v1/reservations/{order_id}:release")
async def release(order_id: str, request: Request) -> dict[str, Any]:
    return reservation(await store.release(order_id, caller(request)))
