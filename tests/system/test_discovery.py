"""Discovery under faults, against the whole system with two instances of each service:
instances killed and restarted, Consul restarted, the control plane restarted, all under
steady order traffic through Envoy. Orders must keep succeeding throughout."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from gateway.envoy_config import UNTHROTTLED
from services.common.registration import consul_client
from shopmesh.system import Ports, Settings, System, http_get
from shopmesh.system import start as start_system
from tests.helpers import Ledger, assert_invariants, record_fault, wait_for
from tests.stack import restart
from tests.system_helpers import ACCOUNTS, PRODUCTS, Traffic, direct_client, write_system_seed


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("discovery")
    seed = write_system_seed(workdir / "seed.json")
    started = start_system(
        Settings(
            workdir=workdir,
            ports=Ports.free(),
            seed_file=seed,
            instances=2,
            envoy_limits=UNTHROTTLED,  # steady traffic from one user
        )
    )
    yield started
    started.stop()


def host_stats(system: System, cluster: str) -> dict[int, dict[str, Any]]:
    """Envoy's view of each host of a cluster, by port: health and request counts."""
    clusters = json.loads(
        http_get(f"http://127.0.0.1:{system.ports.admin}/clusters?format=json")[1]
    )
    hosts = {}
    for status in clusters["cluster_statuses"]:
        if status["name"] != cluster:
            continue
        for host in status.get("host_statuses", []):
            stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
            hosts[host["address"]["socket_address"]["port_value"]] = {
                "eds": host["health_status"].get("eds_health_status", "HEALTHY"),
                "success": stats.get("rq_success", 0),
            }
    return hosts


def consul_instances(system: System, service: str) -> list[tuple[int, str]]:
    _, entries = consul_client(system.consul_http).health.service(service)
    return sorted(
        (
            e["Service"]["Port"],
            "critical" if any(c["Status"] == "critical" for c in e["Checks"]) else "passing",
        )
        for e in entries
    )


def registered(system: System, service: str, count: int) -> bool:
    return len(consul_instances(system, service)) == count


def test_kill_9_of_one_inventory_instance_fails_no_order(system: System) -> None:
    victim = system.inventory[1]
    with Traffic(system) as traffic:
        traffic.wait_for(20)
        killed_at = time.monotonic()
        victim.kill()
        # Envoy learns from Consul (via the control plane) that the instance is gone.
        wait_for(
            lambda: host_stats(system, "inventory")[victim.port]["eds"] == "UNHEALTHY",
            "EDS to mark it",
        )
        rerouted = time.monotonic() - killed_at
        traffic.wait_for(30)
    assert traffic.failures == [], traffic.failures
    record_fault(
        f"inventory instance kill -9 (1 of 2); EDS unhealthy in {rerouted:.1f} s", traffic.summary()
    )

    system.inventory[1] = restart(victim)
    wait_for(
        lambda: host_stats(system, "inventory")[victim.port]["eds"] == "HEALTHY",
        "EDS to mark it healthy",
    )
    before = host_stats(system, "inventory")[victim.port]["success"]
    with Traffic(system) as traffic:
        wait_for(
            lambda: host_stats(system, "inventory")[victim.port]["success"] > before,
            "traffic to it again",
        )
    assert traffic.failures == []


@pytest.mark.parametrize("kill", [False, True], ids=["SIGTERM", "kill -9"])
def test_consul_restart_under_traffic_fails_no_order(system: System, kill: bool) -> None:
    with Traffic(system) as traffic:
        traffic.wait_for(10)
        system.restart_consul(kill=kill)
        for service in ("inventory", "payment", "order"):
            wait_for(partial(registered, system, service, 2), f"{service} registered again")
        traffic.wait_for(30)
    assert traffic.failures == [], traffic.failures
    how = "killed (kill -9)" if kill else "stopped (SIGTERM)"
    record_fault(f"Consul agent {how} and restarted under traffic", traffic.summary())


def test_an_instance_consul_forgot_registers_again(system: System) -> None:
    forgotten = system.order[1]
    client = consul_client(system.consul_http)
    client.agent.service.deregister(f"order-127.0.0.1-{forgotten.port}")
    assert len(consul_instances(system, "order")) == 1
    wait_for(partial(registered, system, "order", 2), "the instance to register again", timeout=10)


def test_control_plane_restart_keeps_traffic_flowing(system: System) -> None:
    with Traffic(system) as traffic:
        traffic.wait_for(10)
        system.controlplane.kill()
        traffic.wait_for(20)  # Envoy keeps its endpoints while the control plane is away
        system.controlplane = restart(system.controlplane)
        traffic.wait_for(20)
    assert traffic.failures == [], traffic.failures
    record_fault("control plane kill -9 and restarted under traffic", traffic.summary())
    # Updates flow again: stop an instance gracefully and watch Envoy drop it.
    leaving = system.payment[1]
    leaving.stop()

    def dropped() -> bool:
        # One read of Envoy's hosts: between two, EDS may drop the host asked about.
        hosts = host_stats(system, "payment")
        return leaving.port not in hosts or hosts[leaving.port]["eds"] != "HEALTHY"

    wait_for(dropped, "EDS to drop it")
    system.payment[1] = restart(leaving)


def test_a_bad_registration_is_dropped_without_envoy_rejecting_updates(system: System) -> None:
    client = consul_client(system.consul_http)
    client.agent.service.register("inventory", service_id="bogus", address="db.example", port=1)
    try:
        wait_for(
            lambda: "bogus" in (system.controlplane.log_path.read_text()),
            "the control plane to drop it",
        )
        assert (
            system.stats("cluster.inventory.update_rejected").get(
                "cluster.inventory.update_rejected", 0
            )
            == 0
        )
        with Traffic(system) as traffic:
            traffic.wait_for(10)
        assert traffic.failures == []
    finally:
        client.agent.service.deregister("bogus")


def test_invariants_hold_after_all_of_it(system: System) -> None:
    client = direct_client(system)
    wait_for(lambda: all(o.state != 1 for o in client.list_orders("rich")), "every order final")
    assert_invariants(client, Ledger({s: q for s, (_, q) in PRODUCTS.items()}, dict(ACCOUNTS)))
    client.close()
