"""The saga's participant calls over HTTP/JSON with httpx, each participant behind a
circuit breaker (the `circuitbreaker` library): the classic Python way. The saga's
SagaParticipants over HTTP, so the same SagaRunner drives it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from circuitbreaker import CircuitBreaker, CircuitBreakerError

from services.common.errors import ErrorKind, FieldViolation, ServiceError
from services.common.identity import USER_HEADER
from services.order.domain import LineItem, Order
from services.order.saga import StepError

TRANSIENT_STATUS = {500, 502, 503, 504}


class TransportFailure(Exception):
    """A failure the breaker counts: no answer, or a 5xx."""


class HttpParticipants:
    def __init__(self, inventory_url: str, payment_url: str, timeout: float) -> None:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        self._inventory = httpx.AsyncClient(base_url=inventory_url, timeout=timeout, limits=limits)
        self._payment = httpx.AsyncClient(base_url=payment_url, timeout=timeout, limits=limits)
        self._breakers = {
            name: CircuitBreaker(
                failure_threshold=5,
                recovery_timeout=2,
                expected_exception=TransportFailure,
                name=name,
            )
            for name in ("inventory", "payment")
        }

    async def close(self) -> None:
        await self._inventory.aclose()
        await self._payment.aclose()

    async def reserve(self, order: Order, hold_seconds: float) -> list[LineItem]:
        body = {
            "order_id": order.order_id,
            "items": [{"sku": i.sku, "quantity": i.quantity} for i in order.items],
            "hold_seconds": hold_seconds,
        }
        answer = await self._post("inventory", "/v1/reservations", order, body)
        if answer["state"] not in ("HELD", "COMMITTED"):
            error = ServiceError(
                ErrorKind.ABORTED, f"RESERVATION_{answer['state']}", "the hold is gone"
            )
            raise StepError("inventory", error, transient=False)
        return [
            LineItem(i["sku"], i["quantity"], i["price_minor"], i["currency"])
            for i in answer["items"]
        ]

    async def commit(self, order: Order) -> None:
        await self._post("inventory", f"/v1/reservations/{order.order_id}:commit", order)

    async def release(self, order: Order) -> None:
        await self._post("inventory", f"/v1/reservations/{order.order_id}:release", order)

    async def authorize(self, order: Order) -> None:
        body = {
            "order_id": order.order_id,
            "amount_minor": order.total_minor,
            "currency": order.currency,
        }
        await self._post("payment", "/v1/payments", order, body)

    async def capture(self, order: Order) -> None:
        await self._post("payment", f"/v1/payments/{order.order_id}:capture", order)

    async def void(self, order: Order) -> None:
        await self._post("payment", f"/v1/payments/{order.order_id}:void", order)

    async def _post(self, participant: str, path: str, order: Order, body: Any = None) -> Any:
        client = self._inventory if participant == "inventory" else self._payment
        breaker = self._breakers[participant]

        async def raw_send() -> httpx.Response:
            try:
                response = await client.post(
                    path, json=body or {}, headers={USER_HEADER: order.user_id}
                )
            except httpx.HTTPError as error:
                raise TransportFailure(str(error)) from error
            if response.status_code in TRANSIENT_STATUS:
                raise TransportFailure(f"HTTP {response.status_code}")
            return response

        send: Callable[[], Awaitable[httpx.Response]] = breaker(raw_send)
        try:
            response = await send()
        except (TransportFailure, CircuitBreakerError) as error:
            unavailable = ServiceError(ErrorKind.UNAVAILABLE, "UNAVAILABLE", str(error))
            raise StepError(participant, unavailable, transient=True) from error
        payload = response.json()
        if response.status_code >= 400:
            refused = ServiceError(
                ErrorKind(payload["code"]),
                payload["reason"],
                payload["message"],
                metadata=payload.get("metadata", {}),
                violations=tuple(
                    FieldViolation(v["field"], v["description"])
                    for v in payload.get("violations", [])
                ),
            )
            raise StepError(participant, refused, transient=False)
        return payload
