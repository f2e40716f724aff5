"""Test hosts on one machine: Linux network namespaces joined to a bridge by veth pairs.

Each host is a network namespace `<prefix>-<n>` whose one interface has the address
169.254.<subnet>.<n>/24, with its own loopback. The bridge, in this machine's own
namespace, holds 169.254.<subnet>.254, so this process (the cluster's supervisor, the
tests) reaches every host, and the hosts reach one another. The addresses are
link-local (169.254.0.0/16), never the private ranges, and no host has a default route,
so nothing a host sends can leave the machine.

Built with iproute2's `ip` (the kernel's own tool for this), one command at a time so a
failure names its step; torn down in reverse, and `leftovers` finds what a crashed run
left behind. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): `require_root` says so.

A process runs on a host under `ip netns exec` (`Host.command`); code of this process
runs there with `on_host`, in a thread of its own moved into the namespace with
setns(2), which moves only the calling thread (Python 3.11 has no os.setns: ctypes).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ipaddress
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
BRIDGE_HOST = 254
"""The last octet of the bridge's own address (this machine's side)."""
MAX_HOSTS = 200
COMMAND_TIMEOUT_SECONDS = 10.0


class HostsError(Exception):
    """Test hosts that cannot be made: not root, no iproute2, a step refused."""


@dataclass(frozen=True)
class Host:
    """One test host: a network namespace and its address."""

    name: str
    address: str
    link: str
    """Its veth's end on the bridge, in this machine's namespace."""

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run on this host."""
        return ["ip", "netns", "exec", self.name, *argv]


@dataclass(frozen=True)
class Network:
    """The hosts of one cluster and the bridge that joins them."""

    prefix: str
    subnet: int
    bridge: str
    hosts: tuple[Host, ...]

    @property
    def bridge_address(self) -> str:
        return f"169.254.{self.subnet}.{BRIDGE_HOST}"


def require_root() -> None:
    if os.geteuid() != 0:
        raise HostsError(
            "test hosts are Linux network namespaces, which only root can make: run as root"
            " (sudo), or use `make run` for one host"
        )


def _ip(*argv: str) -> None:
    try:
        done = subprocess.run(
            ["ip", *argv],
            check=False,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
    except FileNotFoundError as error:
        raise HostsError("`ip` (iproute2) is not installed: apt-get install iproute2") from error
    if done.returncode != 0:
        raise HostsError(f"ip {' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def build(prefix: str, names: Sequence[str], subnet: int) -> Network:
    """A host per name (`<prefix>-<name>`, addresses .1, .2, ... in name order) on a
    new bridge `<prefix>-br`; everything made so far is removed again if a step fails."""
    require_root()
    if not 0 <= subnet <= 255 or not 0 < len(names) <= MAX_HOSTS:
        raise HostsError(f"subnet must be 0..255 and hosts 1..{MAX_HOSTS}")
    bridge = f"{prefix}-br"
    _check_name(bridge)
    hosts = tuple(
        Host(f"{prefix}-{name}", f"169.254.{subnet}.{n}", f"{prefix}-v{n}")
        for n, name in enumerate(names, 1)
    )
    network = Network(prefix, subnet, bridge, hosts)
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{network.bridge_address}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for host in hosts:
            _add_host(host, bridge)
    except BaseException:
        teardown(network)
        raise
    return network


def _add_host(host: Host, bridge: str) -> None:
    outside, inside = host.link, "eth0"
    _check_name(outside)
    _ip("netns", "add", host.name)
    _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", host.name)
    _ip("link", "set", outside, "master", bridge, "up")
    on = ("netns", "exec", host.name, "ip")
    _ip(*on, "addr", "add", f"{host.address}/24", "dev", inside)
    _ip(*on, "link", "set", inside, "up")
    _ip(*on, "link", "set", "lo", "up")


def _check_name(interface: str) -> None:
    if len(interface) > 15:  # the kernel's IFNAMSIZ, less its NUL
        raise HostsError(f"interface name {interface!r} is longer than 15 characters")


def teardown(network: Network) -> list[str]:
    """Removes every host and the bridge (a host's veth pair goes with its namespace);
    returns what could not be removed. Processes on a host must be stopped first."""
    problems: list[str] = []
    # The veth first (both ends go at once; the kernel would remove it with its
    # namespace too, but later, in the background), then the namespace, the bridge last.
    for host in network.hosts:
        _remove(problems, "link", "del", host.link)
        _remove(problems, "netns", "del", host.name)
    _remove(problems, "link", "del", network.bridge)
    return problems


def _remove(problems: list[str], *argv: str) -> None:
    """Runs an `ip` removal; one of something already gone is no problem."""
    try:
        _ip(*argv)
    except HostsError as error:
        if "Cannot find device" not in str(error) and "No such file" not in str(error):
            problems.append(str(error))


def leftovers(prefix: str) -> list[str]:
    """Namespaces and links named `<prefix>-...` that exist now."""
    found = []
    for argv in (["ip", "netns", "list"], ["ip", "-o", "link", "show"]):
        listed = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=10
        ).stdout
        for line in listed.splitlines():
            words = line.replace(":", " ").replace("@", " ").split()
            found += [w for w in words if w.startswith(f"{prefix}-")]
    return sorted(set(found))


_libc = ctypes.CDLL(None, use_errno=True)


def _enter(host: Host) -> None:
    with open(f"/run/netns/{host.name}") as namespace:
        if _libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {host.name}: {os.strerror(error)}")


def on_host(host: Host, call: Callable[[], T]) -> T:
    """`call()`'s result, run on `host`: in a new thread moved into its namespace, so
    the sockets it opens are the host's (its loopback, its address)."""

    def there() -> T:
        _enter(host)
        return call()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(there).result()


def is_link_local(address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network("169.254.0.0/16")
