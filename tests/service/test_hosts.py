"""Test hosts as network namespaces (shopmesh/hosts.py): three hosts and this machine
reach one another over the bridge, by link-local addresses only, no host can reach
anything else, and the teardown leaves no namespace or link behind."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from shopmesh import hosts
from shopmesh.hosts import Host, Network

PREFIX = f"smt{os.getpid() % 10000}"
SUBNET = 200 + os.getpid() % 50  # not 169.254.169.x, where clouds keep their metadata


@pytest.fixture
def network() -> Iterator[Network]:
    built = hosts.build(PREFIX, ["a", "b", "c"], SUBNET)
    try:
        yield built
    finally:
        assert hosts.teardown(built) == []


def listener(host: Host) -> socket.socket:
    """A TCP socket listening on `host`'s address, on a free port."""

    def listen() -> socket.socket:
        server = socket.socket()
        server.bind((host.address, 0))
        server.listen()
        return server

    return hosts.on_host(host, listen)


def reaches(source: Host | None, address: str, port: int) -> bool:
    """Whether a TCP connection from `source` (None: this machine) is accepted."""

    def connect() -> bool:
        try:
            socket.create_connection((address, port), timeout=2).close()
            return True
        except OSError:
            return False

    return connect() if source is None else hosts.on_host(source, connect)


def test_the_hosts_and_this_machine_reach_one_another(network: Network) -> None:
    servers = {host.name: listener(host) for host in network.hosts}
    try:
        for target in network.hosts:
            port = servers[target.name].getsockname()[1]
            assert reaches(None, target.address, port), f"this machine -> {target.name}"
            for source in network.hosts:
                assert reaches(source, target.address, port), f"{source.name} -> {target.name}"
    finally:
        for server in servers.values():
            server.close()


def test_a_hosts_loopback_is_its_own(network: Network) -> None:
    """What listens on a host's 127.0.0.1 is not reached from another host or from here."""
    a, b = network.hosts[0], network.hosts[1]

    def listen_on_loopback() -> socket.socket:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        return server

    server = hosts.on_host(a, listen_on_loopback)
    try:
        port = server.getsockname()[1]
        assert reaches(a, "127.0.0.1", port)
        assert not reaches(b, "127.0.0.1", port)
        assert not reaches(None, "127.0.0.1", port)
    finally:
        server.close()


def test_hosts_have_link_local_addresses_and_no_way_off_the_machine(network: Network) -> None:
    for host in network.hosts:
        assert hosts.is_link_local(host.address)
        routes = subprocess.run(
            host.command(["ip", "route", "show"]),
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        assert "default" not in routes
        # Asking the kernel for a route sends nothing: it answers from the table.
        asked = subprocess.run(
            host.command(["ip", "route", "get", "192.0.2.1"]),
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert asked.returncode != 0 and "unreachable" in asked.stderr


def test_the_teardown_leaves_nothing_behind() -> None:
    built = hosts.build(PREFIX, ["x", "y"], SUBNET)
    assert len(hosts.leftovers(PREFIX)) >= 3  # two namespaces, a bridge, two veths
    assert hosts.teardown(built) == []
    assert hosts.leftovers(PREFIX) == []


def test_a_failed_build_removes_what_it_made() -> None:
    """The second host of one name fails half-way: the first, and the bridge, go too."""
    with pytest.raises(hosts.HostsError, match="netns add"):
        hosts.build(PREFIX, ["a", "a"], SUBNET)
    assert hosts.leftovers(PREFIX) == []
    with pytest.raises(hosts.HostsError, match="longer than 15 characters"):
        hosts.build(PREFIX + "-much-too-long-a-prefix", ["a"], SUBNET)
