"""A state-of-the-world ADS server for EDS and SDS: Envoy subscribes to clusters and
secrets by name, we push endpoints and certificates.

Each resource (a cluster's ClusterLoadAssignment, a Secret) goes in a response of its
own (the xDS protocol allows it for EDS and SDS): if Envoy rejects one (a NACK), the
others still update. A NACKed version is logged and not sent again; the next change gets
a new version. Nonces identify responses, so ACKs and NACKs are matched to the resource
they answer. Subscriptions are kept per type: a request for secrets leaves the clusters
subscribed as they were. An empty EDS subscription means every cluster (a wildcard).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, message

from gateway.controlplane.resources import EDS_TYPE_URL, SDS_TYPE_URL, type_url_of, version_of

log = logging.getLogger(__name__)


SERVED_TYPES = (EDS_TYPE_URL, SDS_TYPE_URL)

Key = tuple[str, str]
"""A resource's type URL and name."""


@dataclass(frozen=True)
class Resource:
    version: str
    body: message.Message


class Snapshot:
    """The current resource of each (type, name), and the streams waiting for changes."""

    def __init__(self) -> None:
        self._resources: dict[Key, Resource] = {}
        self._listeners: set[asyncio.Event] = set()

    def set(self, name: str, body: message.Message) -> bool:
        """Stores the resource `name` (its type is the message's); True (and every stream
        woken) if it changed."""
        key = (type_url_of(body), name)
        version = version_of(body)
        current = self._resources.get(key)
        if current is not None and current.version == version:
            return False
        self._resources[key] = Resource(version, body)
        for event in self._listeners:
            event.set()
        return True

    def get(self, type_url: str, name: str) -> Resource | None:
        return self._resources.get((type_url, name))

    def names(self, type_url: str) -> list[str]:
        return sorted(name for kind, name in self._resources if kind == type_url)

    def listen(self) -> asyncio.Event:
        event = asyncio.Event()
        self._listeners.add(event)
        return event

    def forget(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)


@dataclass
class StreamState:
    """What one Envoy has asked for and been sent, on one stream."""

    node: str = "?"
    subscribed: dict[str, set[str]] = field(default_factory=dict)  # type -> names
    sent: dict[Key, str] = field(default_factory=dict)  # resource -> version sent last
    # nonce -> (resource, version it carried): a NACK names the version it rejects, not
    # whatever was sent last (a newer version may have gone out before the NACK came back).
    nonces: dict[str, tuple[Key, str]] = field(default_factory=dict)
    rejected: dict[Key, set[str]] = field(default_factory=dict)  # resource -> NACKed versions

    def wanted(self, snapshot: Snapshot) -> list[Key]:
        """Every resource this Envoy subscribes to; EDS's empty subscription is all."""
        keys = []
        for type_url in SERVED_TYPES:
            names = self.subscribed.get(type_url)
            if names is None:
                continue
            if not names and type_url == EDS_TYPE_URL:
                names = set(snapshot.names(type_url))
            keys += [(type_url, name) for name in sorted(names)]
        return keys


class AggregatedDiscovery(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._nonces = itertools.count(1)

    async def StreamAggregatedResources(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        state = StreamState()
        wake = self._snapshot.listen()
        reader = asyncio.create_task(self._read(requests, state, wake))
        try:
            while not reader.done():
                wake.clear()  # before looking, so a change while we send is not missed
                for response in self._due(state):
                    yield response
                waiter = asyncio.create_task(wake.wait())
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        finally:
            self._snapshot.forget(wake)
            reader.cancel()
            log.info("xDS stream from %s closed", state.node)

    def _due(self, state: StreamState) -> list[discovery_pb2.DiscoveryResponse]:
        """A response for each subscribed resource whose current version was not sent."""
        due = []
        for key in state.wanted(self._snapshot):
            resource = self._snapshot.get(*key)
            if resource is None or state.sent.get(key) == resource.version:
                continue
            if resource.version in state.rejected.get(key, set()):
                continue
            nonce = str(next(self._nonces))
            packed = any_pb2.Any()
            packed.Pack(resource.body)
            state.sent[key] = resource.version
            state.nonces[nonce] = (key, resource.version)
            due.append(
                discovery_pb2.DiscoveryResponse(
                    version_info=resource.version,
                    resources=[packed],
                    type_url=key[0],
                    nonce=nonce,
                )
            )
            log.info(
                "sent %s %s to %s (%s)", key[1], resource.version, state.node, _summary(resource)
            )
        return due

    async def _read(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        state: StreamState,
        wake: asyncio.Event,
    ) -> None:
        async for request in requests:
            state.node = request.node.id or state.node
            if request.type_url not in SERVED_TYPES:
                log.warning(
                    "ignoring a request for %s: only EDS and SDS are served", request.type_url
                )
                continue
            key, version = state.nonces.pop(request.response_nonce, (None, ""))
            if request.HasField("error_detail") and key is not None:
                state.rejected.setdefault(key, set()).add(version)
                log.error(
                    "Envoy %s rejected %s %s: %s",
                    state.node,
                    key[1],
                    version,
                    request.error_detail.message,
                )
            elif key is not None:
                log.debug("Envoy %s applied %s %s", state.node, key[1], request.version_info)
            state.subscribed[request.type_url] = set(request.resource_names)
            wake.set()


def _summary(resource: Resource) -> str:
    """What a log line says of a resource: never a secret's bytes."""
    body = resource.body
    if isinstance(body, endpoint_pb2.ClusterLoadAssignment):
        return f"{sum(len(e.lb_endpoints) for e in body.endpoints)} endpoints"
    return "a secret"
