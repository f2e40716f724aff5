"""Which certified callers a service under mutual TLS serves at all.

The TLS handshake admits any certificate from our CA; grpcio cannot refuse one by its
SAN there, so this interceptor does it at each call: a caller whose SPIFFE ID is not
among `allowed` gets PERMISSION_DENIED PEER_NOT_ALLOWED on every unary method but the
health service's (which tells nothing, and which Consul's agent, holding a certificate
of its own, checks). The streaming methods, health's Watch and reflection, stay open to
every certified caller: they tell what the repository's proto/ tells.

Services are called only through Envoy (the gateway identity): its public listener for
users, its internal listener for the order saga and reporting, where Envoy's RBAC
decides per method. Sits inside ErrorInterceptor, which turns the refusal into its
status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health

from services.common import tls
from services.common.errors import ErrorKind, ServiceError

OPEN_TO_EVERY_PEER = f"/{health.SERVICE_NAME}/"
"""Methods whose path starts with this are served to every certified caller."""


def parse_names(text: str) -> frozenset[str]:
    """`gateway,order` -> their SPIFFE IDs."""
    return frozenset(tls.spiffe_id(n.strip()) for n in text.split(",") if n.strip())


class PeerInterceptor(grpc.aio.ServerInterceptor):
    """Serves unary methods only to callers whose certificate names one of `allowed`."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self._allowed = allowed
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
        if handler is None or handler.unary_unary is None or method.startswith(OPEN_TO_EVERY_PEER):
            return handler
        behavior = handler.unary_unary
        allowed = self._allowed

        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            check(context, allowed)
            return await behavior(request, context)

        wrapped = grpc.unary_unary_rpc_method_handler(
            admitted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = wrapped
        return wrapped


def check(context: grpc.aio.ServicerContext, allowed: frozenset[str]) -> None:
    secure, peer = tls.peer_identity(context)
    if secure and peer not in allowed:
        raise ServiceError(
            ErrorKind.PERMISSION_DENIED,
            "PEER_NOT_ALLOWED",
            f"{peer or 'a certificate without a SPIFFE ID'} may not call this service",
        )
