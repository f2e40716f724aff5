"""shopmesh on several test hosts (`shopmesh cluster`): network namespaces on one machine
(shopmesh/hosts.py), each running a Consul server of one three-server raft cluster and a
node of one three-node JetStream cluster.

Every part is locked down as under `shopmesh run --mutual-tls` (docs/architecture.md,
"What each transport trusts"): one CA for the cluster, a certificate per holder per
host (WORKDIR/<host>/certs/<holder>, naming the host's address where its clients dial
by address), Consul with ACLs, gossip encryption and HTTPS only.

Ports are the same on every host: each host is a namespace of its own, so they cannot
collide with one another or with this machine's.

Tuned for about thirty processes sharing 2 cores: Consul keeps its default
`raft_multiplier` (5: a leader is suspected after about 5 s without contact), not the
single-host setting of 1, under which leadership flapped as soon as the hosts were busy.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field

from consul.callback import CB

from services.common.registration import ConsulAccess, consul_client
from shopmesh import ca, consul_security, hosts, nats_security
from shopmesh.hosts import Host, Network
from shopmesh.nats_server import NatsServer, jetstream_info
from shopmesh.processes import Process, stop_together
from shopmesh.system import consul_has_leader
from shopmesh.tools import WORKDIR, tool

CONSUL_HTTPS = 8501
CONSUL_SERVER = 8300
CONSUL_SERF = 8301
NATS = 4222
NATS_ROUTES = 6222
NATS_MONITOR = 8222
"""On each host's own 127.0.0.1 (monitoring has no authentication): read through
`hosts.on_host`."""
READY_TIMEOUT_SECONDS = 60.0
"""Three raft servers on two busy cores take a while to elect a leader."""
CERTIFICATE_HOLDERS = ("consul", "nats", "operator")
DIALLED_BY_ADDRESS = ("consul", "nats")
"""Servers whose clients verify the address they dial: Consul's HTTP clients, and NATS's
other nodes (their routes dial each node's address)."""


@dataclass(frozen=True)
class ClusterSettings:
    workdir: pathlib.Path = WORKDIR / "cluster"
    hosts: int = 3
    prefix: str = "smc"
    subnet: int = 100
    """The hosts' addresses are 169.254.<subnet>.1, .2, ...; this machine's is .254."""

    def host_dir(self, host: Host) -> pathlib.Path:
        return self.workdir / host.name

    def certificate_dir(self, host: Host, holder: str) -> pathlib.Path:
        return self.host_dir(host) / "certs" / holder

    @property
    def secrets(self) -> consul_security.ConsulSecrets:
        return consul_security.ConsulSecrets(self.workdir / "consul-secrets")


def node_name(host: Host) -> str:
    return host.name


@dataclass
class Cluster:
    settings: ClusterSettings
    network: Network
    consul: dict[str, Process] = field(default_factory=dict)
    """The Consul server on each host, by host name."""
    nats: dict[str, NatsServer] = field(default_factory=dict)
    """The JetStream node on each host, by host name."""

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.network.hosts

    def operator_access(self, host: Host) -> ConsulAccess:
        """shopmesh's own access to `host`'s Consul agent: the bootstrap token, HTTPS."""
        return ConsulAccess(
            f"{host.address}:{CONSUL_HTTPS}",
            self.settings.secrets.token_file("master"),
            self.settings.certificate_dir(host, "operator"),
        )

    def parts(self) -> list[Process]:
        return [*self.nats.values(), *self.consul.values()]

    def nats_urls(self) -> list[str]:
        return [node.url for node in self.nats.values()]

    def stop(self) -> list[str]:
        """Stops every process by PID, then removes the hosts; what could not be removed."""
        stop_together(self.parts())
        return hosts.teardown(self.network)


def issue_certificates(settings: ClusterSettings, network: Network) -> None:
    authority = ca.ensure_ca(settings.workdir / "ca")
    for host in network.hosts:
        for holder in CERTIFICATE_HOLDERS:
            addresses = (host.address,) if holder in DIALLED_BY_ADDRESS else ()
            ca.issue(authority, holder, settings.certificate_dir(host, holder), addresses=addresses)
    settings.secrets.ensure(())


def consul_server(settings: ClusterSettings, network: Network, host: Host) -> Process:
    """One of the three raft servers, on `host`, joining the others by their addresses."""
    data = settings.host_dir(host) / "consul"
    data.mkdir(parents=True, exist_ok=True)
    config = consul_security.agent_config(
        settings.secrets, settings.certificate_dir(host, "consul"), CONSUL_HTTPS
    )
    config.update(
        {
            "node_name": node_name(host),
            "server": True,
            "bootstrap_expect": len(network.hosts),
            "bind_addr": host.address,
            "advertise_addr": host.address,
            "client_addr": host.address,
            "retry_join": [h.address for h in network.hosts if h != host],
            "retry_interval": "1s",
            "data_dir": str(data),
            "log_level": "warn",
            "performance": {"raft_multiplier": 5},
            "disable_update_check": True,
        }
    )
    config["ports"].update(
        {"dns": -1, "grpc": -1, "serf_wan": -1, "server": CONSUL_SERVER, "serf_lan": CONSUL_SERF}
    )
    path = consul_security.write_agent_config(settings.host_dir(host) / "consul.json", config)
    process = Process(
        f"consul@{host.name}",
        settings.host_dir(host) / "consul.log",
        [tool("consul"), "agent", f"-config-file={path}"],
        # Its HTTPS API is on the host's address, which this machine reaches.
        ready=lambda: consul_has_leader(
            f"{host.address}:{CONSUL_HTTPS}", settings.certificate_dir(host, "operator")
        ),
    )
    process.runner = host.command([])
    return process


def on_host(process: Process, host: Host) -> Process:
    """`process` as run on `host`: its command under `ip netns exec`, its readiness
    checked from inside the host (what listens on the host's 127.0.0.1)."""
    process.runner = host.command([])
    check = process.is_ready
    process.is_ready = lambda: hosts.on_host(host, check)  # type: ignore[method-assign]
    return process


def nats_node(settings: ClusterSettings, network: Network, host: Host) -> NatsServer:
    """One of three JetStream nodes: clients on the host's address, routes to the others
    over TLS (each node's certificate verified against our CA and its address)."""
    certificate = settings.certificate_dir(host, "nats")
    routes_tls = {
        "cert_file": str(certificate / "cert.pem"),
        "key_file": str(certificate / "key.pem"),
        "ca_file": str(certificate / "ca.pem"),
        "verify": True,
        "timeout": 2,
    }
    others = [h for h in network.hosts if h != host]
    node = NatsServer(
        settings.host_dir(host) / "nats",
        settings.host_dir(host) / "nats.log",
        NATS,
        NATS_MONITOR,
        nats_security.server_config(certificate),
        address=host.address,
        server_name=host.name,
        cluster={
            "name": "shopmesh",
            "host": host.address,
            "port": NATS_ROUTES,
            "routes": [f"nats-route://{h.address}:{NATS_ROUTES}" for h in others],
            "tls": routes_tls,
        },
    )
    node.label = f"nats@{host.name}"
    on_host(node, host)
    return node


def jetstream_meta_leader(host: Host) -> str:
    """The JetStream meta leader's name as `host`'s node sees it ("" if none yet)."""
    info = hosts.on_host(host, lambda: jetstream_info(NATS_MONITOR))
    return str(((info or {}).get("meta_cluster") or {}).get("leader") or "")


def start(settings: ClusterSettings, progress: Callable[[str], None] = lambda _: None) -> Cluster:
    """Builds the hosts and starts every part on them; returns once all are ready, or
    stops what it started, removes the hosts and raises."""
    hosts.require_root()
    names = [f"h{n}" for n in range(1, settings.hosts + 1)]
    progress(f"building {len(names)} hosts")
    network = hosts.build(settings.prefix, names, settings.subnet)
    cluster = Cluster(settings, network)
    try:
        for host in network.hosts:
            settings.host_dir(host).mkdir(parents=True, exist_ok=True)
        progress("issuing certificates")
        issue_certificates(settings, network)
        progress("starting a Consul server and a JetStream node on every host")
        for host in network.hosts:
            cluster.consul[host.name] = consul_server(settings, network, host).start()
            cluster.nats[host.name] = nats_node(settings, network, host).start()
        for process in cluster.consul.values():
            process.wait_until(process.is_ready, "a Consul leader", READY_TIMEOUT_SECONDS)
        for node in cluster.nats.values():
            node.wait_until(node.is_ready, "JetStream up", READY_TIMEOUT_SECONDS)
        consul_security.create_tokens(
            cluster.operator_access(network.hosts[0]),
            settings.secrets,
            [node_name(h) for h in network.hosts],
            (),
        )
        return cluster
    except BaseException:
        cluster.stop()
        raise


def raft_servers(cluster: Cluster, host: Host) -> list[dict[str, object]]:
    """The raft servers as `host`'s agent sees them (/v1/operator/raft/configuration),
    answered by that server itself (`stale`), so a follower answers while there is no
    leader to ask."""
    client = consul_client(cluster.operator_access(host))
    # py-consul's operator.raft_config sends no token: ask with the client's own.
    answer = client.http.get(
        CB.json(),
        "/v1/operator/raft/configuration",
        params=[("stale", "1")],
        headers=client.prepare_headers(),
    )
    servers: list[dict[str, object]] = answer["Servers"]
    return servers
