"""The baseline payment service: FastAPI over the same store as shopmesh's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel

from bench.baseline.common import caller, install_error_handler, open_store, seed_file
from services.common import validation
from services.common.errors import Violations
from services.payment.domain import DEFAULT_AUTHORIZATION_SECONDS, MAX_AMOUNT_MINOR, Payment
from services.payment.store import PaymentStore
from shop.payment.v1 import payment_service_pb2 as rpc

store = open_store(PaymentStore)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if (seed := seed_file()) is not None:  # before the app answers: accounts to serve
        await store.seed(seed)
    yield


app = FastAPI(lifespan=lifespan)
install_error_handler(app)


class AuthorizeIn(BaseModel):
    order_id: str
    amount_minor: int
    currency: str


def payment(p: Payment) -> dict[str, Any]:
    return {"order_id": p.order_id, "state": p.state.value, "amount_minor": p.amount_minor}


@app.post("/v1/payments")
async def authorize(body: AuthorizeIn, request: Request) -> dict[str, Any]:
    who = caller(request)
    violations = Violations()
    validation.check_field(violations, rpc.AuthorizePaymentRequest, "order_id", body.order_id)
    violations.check(0 < body.amount_minor <= MAX_AMOUNT_MINOR, "amount_minor", "out of range")
    violations.raise_if_any()
    return payment(
        await store.authorize(
            *(body.order_id, who, body.amount_minor, body.currency),
            authorization_seconds=DEFAULT_AUTHORIZATION_SECONDS,
        )
    )


@app.post("/v1/payments/{order_id}:capture")
async def capture(order_id: str, request: Request) -> dict[str, Any]:
    return payment(await store.capture(order_id, caller(request)))


@app.post("/v1/payments/{order_id}:void")
async def void(order_id: str, request: Request) -> dict[str, Any]:
    return payment(await store.void(order_id, caller(request)))


@app.get("/v1/accounts/{user_id}")
async def account(user_id: str) -> dict[str, Any]:
    a = await store.account(user_id)
    return {"user_id": a.user_id, "available": a.available, "held": a.held}
