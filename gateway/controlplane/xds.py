"""A state-of-the-world ADS server for EDS: Envoy subscribes to clusters, we push endpoints.

Each cluster's ClusterLoadAssignment goes in a response of its own (the xDS protocol
allows it for EDS): if Envoy rejects one (a NACK), the other clusters still update. A
NACKed version is logged and not sent again; the next change gets a new version. Nonces
identify responses, so ACKs and NACKs are matched to the cluster they answer.
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
from google.protobuf import any_pb2

from gateway.controlplane.resources import EDS_TYPE_URL, version_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    version: str
    assignment: endpoint_pb2.ClusterLoadAssignment


class Snapshot:
    """The current resource of each cluster, and the streams waiting for changes."""

    def __init__(self) -> None:
        self._resources: dict[str, Resource] = {}
        self._listeners: set[asyncio.Event] = set()

    def set(self, cluster: str, assignment: endpoint_pb2.ClusterLoadAssignment) -> bool:
        """Stores the cluster's endpoints; True (and every stream woken) if they changed."""
        version = version_of(assignment)
        current = self._resources.get(cluster)
        if current is not None and current.version == version:
            return False
        self._resources[cluster] = Resource(version, assignment)
        for event in self._listeners:
            event.set()
        return True

    def get(self, cluster: str) -> Resource | None:
        return self._resources.get(cluster)

    def names(self) -> list[str]:
        return sorted(self._resources)

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
    subscribed: set[str] = field(default_factory=set)
    sent: dict[str, str] = field(default_factory=dict)  # cluster -> version sent last
    # nonce -> (cluster, version it carried): a NACK names the version it rejects, not
    # whatever was sent last (a newer version may have gone out before the NACK came back).
    nonces: dict[str, tuple[str, str]] = field(default_factory=dict)
    rejected: dict[str, set[str]] = field(default_factory=dict)  # cluster -> NACKed versions


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
        """A response for each subscribed cluster whose current version was not sent."""
        due = []
        for cluster in sorted(state.subscribed or self._snapshot.names()):
            resource = self._snapshot.get(cluster)
            if resource is None or state.sent.get(cluster) == resource.version:
                continue
            if resource.version in state.rejected.get(cluster, set()):
                continue
            nonce = str(next(self._nonces))
            packed = any_pb2.Any()
            packed.Pack(resource.assignment)
            state.sent[cluster] = resource.version
            state.nonces[nonce] = (cluster, resource.version)
            due.append(
                discovery_pb2.DiscoveryResponse(
                    version_info=resource.version,
                    resources=[packed],
                    type_url=EDS_TYPE_URL,
                    nonce=nonce,
                )
            )
            log.info(
                "sent %s %s to %s (%d endpoints)",
                cluster,
                resource.version,
                state.node,
                sum(len(e.lb_endpoints) for e in resource.assignment.endpoints),
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
            if request.type_url != EDS_TYPE_URL:
                log.warning("ignoring a request for %s: only EDS is served", request.type_url)
                continue
            cluster, version = state.nonces.pop(request.response_nonce, (None, ""))
            if request.HasField("error_detail") and cluster is not None:
                state.rejected.setdefault(cluster, set()).add(version)
                log.error(
                    "Envoy %s rejected %s %s: %s",
                    state.node,
                    cluster,
                    version,
                    request.error_detail.message,
                )
            elif cluster is not None:
                log.debug("Envoy %s applied %s %s", state.node, cluster, request.version_info)
            state.subscribed = set(request.resource_names)
            wake.set()
