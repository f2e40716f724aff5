"""The control plane's pure part (Consul entries -> Envoy resources), its watch's
last-good rules, and its ADS protocol handling (versions, nonces, ACK/NACK) in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from gateway.controlplane.consul_watch import ServiceWatch
from gateway.controlplane.resources import (
    DEGRADED,
    EDS_TYPE_URL,
    HEALTHY,
    UNHEALTHY,
    Endpoint,
    endpoints_from_health,
    load_assignment,
    version_of,
)
from gateway.controlplane.xds import AggregatedDiscovery, Snapshot


def entry(port: int, *statuses: str, address: str = "127.0.0.1") -> dict[str, Any]:
    return {
        "Node": {"Address": "127.0.0.1"},
        "Service": {"ID": f"inventory-{port}", "Address": address, "Port": port},
        "Checks": [{"Status": s} for s in statuses],
    }


def test_health_maps_to_envoy_health_and_critical_instances_are_kept() -> None:
    endpoints, problems = endpoints_from_health(
        [entry(3, "passing", "passing"), entry(1, "passing", "critical"), entry(2, "warning")]
    )
    assert problems == []
    assert [(e.port, e.health) for e in endpoints] == [(1, UNHEALTHY), (2, DEGRADED), (3, HEALTHY)]


def test_entries_envoy_would_reject_are_dropped_and_reported() -> None:
    endpoints, problems = endpoints_from_health(
        [entry(1, "passing"), entry(2, "passing", address="db.example"), entry(70000, "passing")]
    )
    assert [e.port for e in endpoints] == [1]
    assert len(problems) == 2
    assert "not an IP address" in problems[0]


def test_an_empty_service_address_falls_back_to_the_node_address() -> None:
    endpoints, _ = endpoints_from_health([entry(5, "passing", address="")])
    assert endpoints[0].address == "127.0.0.1"


def test_versions_are_derived_from_content() -> None:
    a = [Endpoint("127.0.0.1", 1, HEALTHY, "a"), Endpoint("127.0.0.1", 2, HEALTHY, "b")]
    same = version_of(load_assignment("inventory", a))
    assert version_of(load_assignment("inventory", a[::-1])) == same
    flapped = [a[0], Endpoint("127.0.0.1", 2, UNHEALTHY, "b")]
    assert version_of(load_assignment("inventory", flapped)) != same


def test_the_watch_never_replaces_endpoints_with_nothing() -> None:
    published: list[list[Endpoint]] = []
    watch = ServiceWatch(
        "127.0.0.1:1", "inventory", lambda _, endpoints: published.append(endpoints)
    )
    watch.accept([entry(1, "passing")])
    watch.accept([entry(1, "passing")])  # unchanged: nothing sent
    watch.accept([])  # a restarted agent that has not got its registrations back
    assert len(published) == 1
    assert [e.port for e in watch.last_good] == [1]
    watch.accept([entry(1, "critical")])
    assert published[-1][0].health == UNHEALTHY


def test_a_service_nobody_runs_is_published_once_as_empty() -> None:
    """Envoy serves only once every cluster has had its first assignment: an empty one
    for a service with no instance (the consumers, with events off) lets it start at once."""
    published: list[list[Endpoint]] = []
    watch = ServiceWatch(
        "127.0.0.1:1", "reporting", lambda _, endpoints: published.append(endpoints)
    )
    watch.accept([])
    watch.accept([])
    assert published == [[]]
    watch.accept([entry(1, "passing")])
    assert [e.port for e in published[-1]] == [1]


@pytest.fixture
async def ads() -> AsyncIterator[tuple[Snapshot, ads_pb2_grpc.AggregatedDiscoveryServiceStub]]:
    snapshot = Snapshot()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
        AggregatedDiscovery(snapshot), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield snapshot, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    await channel.close()
    await server.stop(None)


def assignment(cluster: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    return load_assignment(cluster, [Endpoint("127.0.0.1", p, HEALTHY, str(p)) for p in ports])


def request(
    names: list[str], nonce: str = "", version: str = "", error: str = ""
) -> discovery_pb2.DiscoveryRequest:
    message = discovery_pb2.DiscoveryRequest(
        type_url=EDS_TYPE_URL, resource_names=names, response_nonce=nonce, version_info=version
    )
    message.node.id = "test-envoy"
    if error:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


async def read(call: Any) -> discovery_pb2.DiscoveryResponse:
    response: discovery_pb2.DiscoveryResponse = await asyncio.wait_for(call.read(), 5)
    return response


async def test_one_response_per_cluster_then_pushes_on_change(
    ads: tuple[Snapshot, ads_pb2_grpc.AggregatedDiscoveryServiceStub],
) -> None:
    snapshot, stub = ads
    snapshot.set("inventory", assignment("inventory", 1))
    snapshot.set("payment", assignment("payment", 2))
    call = stub.StreamAggregatedResources()
    await call.write(request(["inventory", "payment"]))
    first, second = await read(call), await read(call)
    assert {first.resources[0].TypeName(), second.resources[0].TypeName()} == {
        "envoy.config.endpoint.v3.ClusterLoadAssignment"
    }
    unpacked = endpoint_pb2.ClusterLoadAssignment()
    first.resources[0].Unpack(unpacked)
    assert (unpacked.cluster_name, len(first.resources)) == ("inventory", 1)
    second.resources[0].Unpack(unpacked)
    assert (unpacked.cluster_name, len(second.resources)) == ("payment", 1)
    assert first.nonce != second.nonce
    assert first.version_info == version_of(assignment("inventory", 1))
    await call.write(request(["inventory", "payment"], first.nonce, first.version_info))  # ACK
    await call.write(request(["inventory", "payment"], second.nonce, second.version_info))  # ACK

    snapshot.set("inventory", assignment("inventory", 1, 3))
    pushed = await read(call)
    pushed.resources[0].Unpack(unpacked)
    assert (unpacked.cluster_name, len(unpacked.endpoints[0].lb_endpoints)) == ("inventory", 2)
    call.cancel()


async def test_a_nacked_version_is_not_sent_again_and_other_clusters_still_update(
    ads: tuple[Snapshot, ads_pb2_grpc.AggregatedDiscoveryServiceStub],
) -> None:
    snapshot, stub = ads
    snapshot.set("inventory", assignment("inventory", 1))
    snapshot.set("payment", assignment("payment", 2))
    call = stub.StreamAggregatedResources()
    await call.write(request(["inventory", "payment"]))
    inventory, payment = await read(call), await read(call)
    # Envoy rejects inventory's version (a NACK carries error_detail and the nonce).
    await call.write(request(["inventory", "payment"], inventory.nonce, "", error="bad endpoint"))
    await call.write(request(["inventory", "payment"], payment.nonce, payment.version_info))
    # Payment changes: only payment is sent, the rejected inventory version is not resent.
    snapshot.set("payment", assignment("payment", 2, 4))
    update = await read(call)
    unpacked = endpoint_pb2.ClusterLoadAssignment()
    update.resources[0].Unpack(unpacked)
    assert unpacked.cluster_name == "payment"
    # A new inventory version is sent again.
    snapshot.set("inventory", assignment("inventory", 5))
    fixed = await read(call)
    fixed.resources[0].Unpack(unpacked)
    assert (unpacked.cluster_name, fixed.version_info) == (
        "inventory",
        version_of(assignment("inventory", 5)),
    )
    call.cancel()


async def test_a_late_nack_blames_the_version_it_answers_not_the_newest(
    ads: tuple[Snapshot, ads_pb2_grpc.AggregatedDiscoveryServiceStub],
) -> None:
    snapshot, stub = ads
    snapshot.set("inventory", assignment("inventory", 1))
    call = stub.StreamAggregatedResources()
    await call.write(request(["inventory"]))
    first = await read(call)
    snapshot.set("inventory", assignment("inventory", 1, 3))  # changes before Envoy answers
    second = await read(call)
    await call.write(request(["inventory"], first.nonce, "", error="bad endpoint"))  # NACK: first
    await call.write(request(["inventory"], second.nonce, second.version_info))  # ACK: second
    snapshot.set("inventory", assignment("inventory", 4))
    assert (await read(call)).version_info == version_of(assignment("inventory", 4))
    # Flapping back to the second version: it was accepted, so it is sent again.
    snapshot.set("inventory", assignment("inventory", 1, 3))
    assert (await read(call)).version_info == second.version_info
    call.cancel()


async def test_a_reconnecting_envoy_gets_the_current_endpoints_at_once(
    ads: tuple[Snapshot, ads_pb2_grpc.AggregatedDiscoveryServiceStub],
) -> None:
    snapshot, stub = ads
    snapshot.set("order", assignment("order", 7))
    for _ in range(2):
        call = stub.StreamAggregatedResources()
        await call.write(request(["order"]))
        assert (await read(call)).version_info == version_of(assignment("order", 7))
        call.cancel()
