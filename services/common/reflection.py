"""Server reflection that also finds a method by its full name.

grpcio-reflection answers "the file containing symbol X" from a protobuf descriptor pool,
and the pool finds messages, fields, enums and services but not a service's methods: so
`grpcurl describe shop.order.v1.OrderService.CreateOrder` answered "Symbol not found"
while describing the service worked. The pool handed to it here answers a method's name
with its service's file, as the reflection protocol asks; every other lookup is the
default pool's.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor, descriptor_pool
from grpc_reflection.v1alpha import reflection

SERVICE_NAME: str = reflection.SERVICE_NAME


class MethodFindingPool:
    """The default descriptor pool, with methods among the symbols it finds."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> object:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is None or method not in service.methods_by_name:
                raise
            return service.file


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection for `service_names` (and reflection itself) on `server`."""
    reflection.enable_server_reflection(
        (*service_names, SERVICE_NAME), server, pool=MethodFindingPool(descriptor_pool.Default())
    )
