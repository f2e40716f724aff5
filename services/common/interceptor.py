"""The one place where a handler's outcome becomes a gRPC status.

A ServiceError becomes its status with ErrorInfo/BadRequest; any other exception becomes
INTERNAL with a generic message (grpc would otherwise send the exception text to the
client as UNKNOWN). Bytes that do not parse as the request message (bad wire format,
invalid UTF-8 in a string) become INVALID_ARGUMENT MALFORMED_REQUEST: grpc's own answer
is UNKNOWN with the parser's exception text. So does a request body that ends without a
whole message (none, half a prefix, a truncated frame): grpc.aio's unary path takes a
half-close without a message for a cancellation and never answers it, so the caller (and
Envoy, until its per-try timeout, which counts against the instance) waits for nothing.
Each unary method is therefore served as stream-unary and reads exactly one message,
which sees the end of a stream that has none; on the wire nothing changes for a
well-formed call. It does not read on to the end: waiting for the half-close after the
message cost about 15% of orders/s (`make bench`, docs/performance.md), so a second
message is ignored, as grpc's own unary path ignores it. Each failed call is logged
once; successes only at DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common.errors import ErrorKind, ServiceError
from services.common.status import internal_status, to_grpc_status

log = logging.getLogger(__name__)

# Statuses a caller causes (bad input, wrong state): logged at INFO, not as failures.
_CALLER_ERRORS = {
    ErrorKind.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS,
    ErrorKind.PERMISSION_DENIED,
    ErrorKind.UNAUTHENTICATED,
    ErrorKind.FAILED_PRECONDITION,
}

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

MALFORMED = object()
"""What a request that failed to parse is replaced with, so the handler can answer it."""

NOT_ONE_MESSAGE = object()
"""What a unary call's body that ends without a whole message stands for."""


async def _only_message(context: grpc.aio.ServicerContext) -> Any:
    """The first message of a unary call's body, or NOT_ONE_MESSAGE if it has none."""
    request = await context.read()
    return NOT_ONE_MESSAGE if request is grpc.aio.EOF else request


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return MALFORMED

    return parse


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps errors of every unary-unary method to statuses; `domain` goes in ErrorInfo."""

    def __init__(self, domain: str) -> None:
        self._domain = domain
        # grpc.aio asks the interceptor on every call: wrap each method's handler once.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior: Behavior = handler.unary_unary
        domain = self._domain

        async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                request = await _only_message(context)
                if request is NOT_ONE_MESSAGE:
                    raise ServiceError(
                        ErrorKind.INVALID_ARGUMENT,
                        "MALFORMED_REQUEST",
                        "the request body ends without one whole gRPC message",
                    )
                if request is MALFORMED:
                    raise ServiceError(
                        ErrorKind.INVALID_ARGUMENT,
                        "MALFORMED_REQUEST",
                        "the request is not a valid protobuf message of this method's type",
                    )
                response = await behavior(request, context)
            except ServiceError as error:
                level = logging.INFO if error.kind in _CALLER_ERRORS else logging.WARNING
                log.log(level, "%s -> %s %s", method, error.kind.name, error.reason)
                await context.abort_with_status(to_grpc_status(error, domain))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                log.exception("%s -> INTERNAL (unexpected exception)", method)
                await context.abort_with_status(internal_status(domain))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s -> OK in %.1f ms", method, (time.perf_counter() - started) * 1e3)
            return response

        wrapped = grpc.stream_unary_rpc_method_handler(
            guarded,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = wrapped
        return wrapped
