"""The baseline order service: FastAPI, JWT verified in the service with PyJWT, and the
same saga (SagaRunner, OrderStore) as shopmesh's, over HttpParticipants."""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
from fastapi import FastAPI, Request
from pydantic import BaseModel

from bench.baseline.common import install_error_handler, open_store, setting
from bench.baseline.participants import HttpParticipants
from services.common import validation
from services.common.errors import ErrorKind, ServiceError, Violations
from services.order import domain
from services.order.config import OrderConfig
from services.order.saga import SagaRunner, SagaSettings
from services.order.store import OrderStore
from shop.order.v1 import order_service_pb2
from shopmesh import tokens

ISSUER, AUDIENCE = tokens.ISSUER, tokens.AUDIENCE
CREATE_ORDER = order_service_pb2.CreateOrderRequest

# The order service's defaults: the baseline runs the same saga as shopmesh does.
DEFAULTS = OrderConfig()
store = open_store(OrderStore)
participants = HttpParticipants(
    setting("INVENTORY_URL"), setting("PAYMENT_URL"), DEFAULTS.call_timeout_seconds
)
saga = SagaRunner(store, participants, SagaSettings.of(DEFAULTS))
_jwks = json.loads(pathlib.Path(setting("JWKS")).read_text())["keys"]
KEYS = {k["kid"]: jwt.PyJWK(k).key for k in _jwks}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await saga.adopt()  # sagas a crash left unfinished, once their leases run out
    yield
    await saga.stop()
    await participants.close()


app = FastAPI(lifespan=lifespan)
install_error_handler(app)


@functools.lru_cache(maxsize=1024)
def verify(token: str) -> str:
    """The token's subject. Verified tokens are cached, as Envoy's jwt_cache_config does."""
    header = jwt.get_unverified_header(token)
    key = KEYS.get(header.get("kid", ""))
    if key is None:
        raise jwt.InvalidTokenError("unknown key")
    claims = jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"require": ["exp", "sub"]},
    )
    return str(claims["sub"])


def user_of(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        if scheme != "Bearer":
            raise jwt.InvalidTokenError("no bearer token")
        return verify(token)
    except jwt.InvalidTokenError as error:
        raise ServiceError(ErrorKind.UNAUTHENTICATED, "UNAUTHENTICATED", "invalid token") from error


class LineItemIn(BaseModel):
    sku: str
    quantity: int


class CreateOrderIn(BaseModel):
    request_id: str
    line_items: list[LineItemIn]


def order_json(o: domain.Order) -> dict[str, Any]:
    return {
        "order_id": o.order_id,
        "user_id": o.user_id,
        "request_id": o.request_id,
        "state": o.state.value,
        "cancel_reason": o.cancel_reason,
        "total_minor": o.total_minor,
        "currency": o.currency,
        "line_items": [
            {"sku": i.sku, "quantity": i.quantity, "price_minor": i.price_minor} for i in o.items
        ],
    }


@app.post("/v1/orders")
async def create_order(body: CreateOrderIn, request: Request) -> dict[str, Any]:
    who = user_of(request)
    # shopmesh's rules, on the body's fields (named as the contract's).
    violations = Violations()
    for field in ("request_id", "line_items"):
        validation.check_field(violations, CREATE_ORDER, field, getattr(body, field))
    validation.check_each_sku_once(violations, CREATE_ORDER, "line_items", body.line_items)
    violations.raise_if_any()
    items = tuple(domain.LineItem(i.sku, i.quantity) for i in body.line_items)
    order_id = uuid.uuid4().hex
    first = saga.first_lease(order_id)
    order, created = await store.create(
        order_id,
        who,
        body.request_id,
        items,
        lease=first.lease,
        lease_seconds=first.seconds,
    )
    if created:
        saga.ensure(order_id, first)
    await saga.wait(order.order_id, DEFAULTS.create_wait_seconds)
    return {"order": order_json(await store.answer(order.order_id))}


@app.get("/v1/orders/{order_id}")
async def get_order(order_id: str, request: Request) -> dict[str, Any]:
    return {"order": order_json(await store.order(order_id, user_of(request)))}
