"""shopmesh on three test hosts (shopmesh/cluster.py), against the real parts: the three
Consul servers form one raft cluster over TLS and gossip encryption, keep a leader when
the leader's host loses its Consul (kill -9: a quorum of two remains), take it back when
it returns; the three JetStream nodes agree on a leader and keep a stream replicated
three times writable with one node down; and the cluster leaves no namespace or link
behind."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from typing import Any

import consul
import nats.aio.client
import pytest
import requests

from services.common import tls
from shopmesh import cluster, hosts
from shopmesh.cluster import Cluster, ClusterSettings
from shopmesh.hosts import Host
from shopmesh.system import consul_has_leader
from tests.helpers import eventually, wait_for

PREFIX = f"smc{os.getpid() % 10000}"
SUBNET = 150 + os.getpid() % 50


@pytest.fixture(scope="module")
def three_hosts() -> Iterator[Cluster]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="shopmesh-cluster-"))
    settings = ClusterSettings(workdir=workdir, prefix=PREFIX, subnet=SUBNET)
    try:
        started = cluster.start(settings)
        try:
            yield started
        finally:
            assert started.stop() == []
            assert hosts.leftovers(PREFIX) == []
    finally:
        shutil.rmtree(workdir)


def leader_of(running: Cluster, host: Host) -> str:
    """The address of the raft leader as `host`'s agent knows it ("" if none, or if it
    cannot say: while there is no leader a follower cannot resolve our token either)."""
    try:
        servers = cluster.raft_servers(running, host)
    except (consul.ConsulException, requests.RequestException):
        return ""
    leaders = [str(s["Address"]) for s in servers if s.get("Leader")]
    return leaders[0].rsplit(":", 1)[0] if leaders else ""


def test_three_consul_servers_form_one_raft_cluster(three_hosts: Cluster) -> None:
    for host in three_hosts.hosts:
        servers = cluster.raft_servers(three_hosts, host)
        assert sorted(str(s["Node"]) for s in servers) == sorted(h.name for h in three_hosts.hosts)
        assert all(s["Voter"] for s in servers)
    leaders = {leader_of(three_hosts, host) for host in three_hosts.hosts}
    assert len(leaders) == 1 and leaders <= {h.address for h in three_hosts.hosts}


def test_the_leaders_host_losing_consul_leaves_a_quorum_that_keeps_a_leader(
    three_hosts: Cluster,
) -> None:
    first = three_hosts.hosts[0]
    address = leader_of(three_hosts, first)
    [leader] = [h for h in three_hosts.hosts if h.address == address]
    others = [h for h in three_hosts.hosts if h != leader]
    three_hosts.consul[leader.name].kill()
    new = wait_for(
        lambda: {leader_of(three_hosts, h) for h in others} - {"", address},
        "the two other servers to elect a leader",
    )
    assert len(new) == 1
    three_hosts.consul[leader.name].start()
    process = three_hosts.consul[leader.name]
    process.wait_until(process.is_ready, "the restarted server to know the leader", 60)
    wait_for(
        lambda: (
            consul_has_leader(
                f"{leader.address}:{cluster.CONSUL_HTTPS}",
                three_hosts.settings.certificate_dir(leader, "operator"),
            )
            and len(cluster.raft_servers(three_hosts, leader)) == 3
        ),
        "the restarted server back among the three",
    )


async def operator_nats(running: Cluster) -> Any:
    """A NATS client as `operator`, knowing all three nodes (it fails over among them)."""
    first = running.hosts[0]
    mine = running.settings.certificate_dir(first, "operator")
    context = ssl.create_default_context(cafile=mine / "ca.pem")
    context.load_cert_chain(mine / "cert.pem", mine / "key.pem")
    client = nats.aio.client.Client()
    await client.connect(
        running.nats_urls(),
        tls=context,
        tls_hostname=tls.dns_name("nats"),
        connect_timeout=5,
        max_reconnect_attempts=20,
        reconnect_time_wait=0.2,  # type: ignore[arg-type]
    )
    return client


ONCE = {"Nats-Msg-Id": "replicated-two"}


def test_three_jetstream_nodes_agree_on_a_meta_leader(three_hosts: Cluster) -> None:
    leaders = wait_for(
        lambda: {cluster.jetstream_meta_leader(h) for h in three_hosts.hosts} - {""},
        "a JetStream meta leader",
    )
    assert len(leaders) == 1 and leaders <= {h.name for h in three_hosts.hosts}


async def test_a_stream_replicated_three_times_takes_events_with_a_node_down(
    three_hosts: Cluster,
) -> None:
    client = await operator_nats(three_hosts)
    try:
        js = client.jetstream(timeout=10)
        await eventually(
            lambda: all(cluster.jetstream_meta_leader(h) for h in three_hosts.hosts),
            "every node to know the meta leader",
        )
        await js.add_stream(name="REPLICATED", subjects=["replicated.>"], num_replicas=3)
        assert (await js.publish("replicated.one", b"1")).seq == 1
        down = three_hosts.hosts[2]
        three_hosts.nats[down.name].kill()

        async def published() -> bool:
            # Retried as the outbox relay retries (the same Nats-Msg-Id, so a publish whose
            # ack was lost is stored once): the client may be reconnecting to another node,
            # and the stream may be electing a leader if its leader was the node killed.
            try:
                ack = await js.publish("replicated.two", b"2", timeout=2, headers=ONCE)
            except nats.errors.Error:
                return False
            return bool(ack.seq == 2)

        await eventually(published, "a publish acknowledged by the two nodes left")
        three_hosts.nats[down.name].start()
        node = three_hosts.nats[down.name]
        await asyncio.to_thread(node.wait_until, node.is_ready, "the node back", 60)

        async def replicas_current() -> bool:
            info = await js.stream_info("REPLICATED")
            replicas = info.cluster.replicas if info.cluster else []
            return len(replicas or []) == 2 and all(r.current for r in replicas or [])

        await eventually(replicas_current, "the returned node to catch up")
        assert (await js.stream_info("REPLICATED")).state.messages == 2
    finally:
        await client.close()
