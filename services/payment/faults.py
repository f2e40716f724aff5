"""TEST ONLY fault hooks of the payment service, off unless a test sets them
(PaymentConfig.lose_replies, delay_seconds, flaky_calls). They make this process the
"slow", "failing" or "reply lost" participant the fault tests need, with effects placed
exactly where a network fault would put them. They are one server interceptor around the
mutating methods, installed only when a fault setting is set, so the handlers hold none
of it and a normal instance does not run it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.common.errors import ErrorKind, ServiceError

MUTATING = ("AuthorizePayment", "CapturePayment", "VoidPayment")


class Faults:
    def __init__(
        self, lose_replies: str = "", delay_seconds: float = 0.0, flaky_calls: int = 0
    ) -> None:
        method, _, count = lose_replies.partition(":")
        self._lose_method, self._lose_left = method, int(count or 0)
        self._delay = delay_seconds
        self._flaky_left = 2 * flaky_calls  # of the first 2N calls, every second one fails

    async def before(self, method: str) -> None:
        """Before the call does anything: a slow instance waits; a flaky one fails half its
        calls with UNAVAILABLE (nothing was done, so a retry is safe)."""
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._flaky_left > 0:
            self._flaky_left -= 1
            if self._flaky_left % 2:
                raise ServiceError(ErrorKind.UNAVAILABLE, "FLAKY", "test fault: unavailable")

    def after_commit(self, method: str) -> None:
        """After the call took effect: its reply is lost (the caller sees UNAVAILABLE)."""
        if method == self._lose_method and self._lose_left > 0:
            self._lose_left -= 1
            raise ServiceError(ErrorKind.UNAVAILABLE, "REPLY_LOST", "test fault: reply lost")


class FaultInterceptor(grpc.aio.ServerInterceptor):
    """Runs `faults` around each mutating method: `before` ahead of the handler,
    `after_commit` once it has succeeded. It sits inside the ErrorInterceptor, which turns
    the faults' ServiceErrors into statuses as it does the handlers' own."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method.rpartition("/")[2]
        if handler is None or handler.unary_unary is None or method not in MUTATING:
            return handler
        behavior = handler.unary_unary
        faults = self._faults

        async def with_faults(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await faults.before(method)
            response = await behavior(request, context)
            faults.after_commit(method)
            return response

        return grpc.unary_unary_rpc_method_handler(
            with_faults,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
