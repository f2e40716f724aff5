"""The whole local system under one parent: NATS, the SMTP sink, Consul, the control plane,
the services (notification among them),
Envoy.

`start` brings the parts up in order (with `postgres`, the PostgreSQL cluster first, which
the services keep their state in; then NATS, the events' broker, the SMTP sink (unless
`smtp` names a real server) and Consul, since
everything registers with it, side by side; then the control plane, every service
instance and Envoy at once; with `events` off no NATS, sink, notification or reporting,
and the services write no outbox row) and returns when each is healthy: NATS has JetStream up,
Consul has a leader, each service serves, and Envoy reports a healthy endpoint for every
instance. Readiness is polled, never assumed after a sleep. The
parent must stay alive: Envoy asks the kernel to stop it when its parent exits
(PR_SET_PDEATHSIG, measured with Envoy 1.40); `shopmesh run` stays, supervising `parts()`
(shopmesh.processes). `stop` stops them in order: the services, then NATS and the PostgreSQL
server, Consul last.
"""

from __future__ import annotations

import json
import pathlib
import signal
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

from gateway.controlplane.config import ADS_PORT, CONSUL_HTTP_PORT
from gateway.envoy_config import EnvoySettings, Limits, write
from services.common.config import setting
from services.common.registration import ConsulAccess
from services.order.config import GATEWAY_TRY_TIMEOUT_SECONDS
from shopmesh import ca, consul_security, nats_security, postgres, tokens
from shopmesh.check import Location
from shopmesh.nats_server import NatsServer
from shopmesh.postgres import ServiceDatabase
from shopmesh.processes import Process, ServiceProcess, spawn_service, stop_together
from shopmesh.smtp_sink import sink_process
from shopmesh.tools import DEMO_DATA, REPO, WORKDIR, free_ports, tool

READY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Ports:
    """Where each part listens (on 127.0.0.1, but the public listener on
    `Settings.public_address`); 0 is a free port picked at start. `shopmesh run` has a
    flag for each, its help and default taken from here."""

    public: int = setting(8080, "Envoy public")
    internal: int = setting(15001, "Envoy internal")
    admin: int = setting(9901, "Envoy admin")
    xds: int = setting(ADS_PORT, "control plane")
    consul_http: int = setting(CONSUL_HTTP_PORT, "Consul HTTP")
    # Consul's own ports, which nobody addresses (the DNS one only on purpose): free ones,
    # so a machine that already runs a Consul agent, or a second stack, can still start.
    consul_dns: int = setting(0, "Consul DNS")
    consul_server: int = setting(0, "Consul server RPC")
    consul_serf: int = setting(0, "Consul serf LAN")
    # NATS's conventional ports: the services and the `nats` tools address them.
    nats: int = setting(4222, "NATS client (JetStream)")
    nats_monitor: int = setting(8222, "NATS monitoring (HTTP)")

    @classmethod
    def free(cls) -> Ports:
        """Every port picked by the kernel, for tests running side by side."""
        return cls(*free_ports(len(fields(cls))))

    def resolved(self) -> Ports:
        """These ports with each 0 replaced by a free one (for TCP and UDP alike), picked
        now. Consul's data dir may have known other ones: it still elects itself leader
        (its raft peer keeps the old address, which a single server never dials; the
        check is tests/system/test_run.py's)."""
        unset = [f.name for f in fields(self) if getattr(self, f.name) == 0]
        taken = {getattr(self, f.name) for f in fields(self)}
        picked = free_ports(len(unset), udp=True, avoid=taken)
        return replace(self, **dict(zip(unset, picked, strict=True)))


# One Envoy worker thread. Envoy's default is one per core, but here Envoy shares a
# laptop's few cores with the Python services: on the 2-core bench machine one worker took
# 90 µs of CPU per REST GET against 155 µs with two, and cut the order path's p50 at a fixed
# rate by a quarter (docs/performance.md). On a machine with cores to spare, raise it.
ENVOY_CONCURRENCY = 1


@dataclass(frozen=True)
class Settings:
    """What a system is started with; `shopmesh run`'s flags take the help and default of
    the fields that have a help text."""

    workdir: pathlib.Path = setting(WORKDIR, "logs, databases and the rendered envoy.yaml")
    ports: Ports = field(default_factory=Ports)
    instances: int = setting(1, "instances of each service")
    seed_file: pathlib.Path = DEMO_DATA
    public_address: str = "127.0.0.1"
    service_settings: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Extra flags per service, e.g. {"order": {"step_retry_seconds": "20"}}."""
    envoy_limits: Limits = field(default_factory=Limits)
    keys_dir: pathlib.Path | None = None
    """Where the dev JWT keys live; unset: `<workdir>/jwt`."""
    envoy_concurrency: int = setting(ENVOY_CONCURRENCY, "Envoy worker threads")
    """See ENVOY_CONCURRENCY."""
    postgres: bool = setting(
        False,
        "keep the services' state in a PostgreSQL cluster under WORKDIR/postgres, started"
        " and stopped with the rest (a database and a role per service), not in SQLite files",
    )
    databases: Mapping[str, ServiceDatabase] = field(default_factory=dict)
    """A PostgreSQL database, on a server run elsewhere, for each service named here (the
    tests' session server); each other service's is in the cluster of `postgres`, or a
    SQLite file `<workdir>/<service>.db`."""
    smtp: str = setting(
        "",
        "host:port of the SMTP server the notification service sends through; unset: a"
        " local sink that writes each message to WORKDIR/mail (a Maildir)",
    )
    events: bool = setting(
        True,
        "deliver events: NATS, the SMTP sink, notification and reporting, and the"
        " services' outbox relays; off, none of them runs and the services write no"
        " outbox row (the order log stays), as the benchmark's events-off system",
    )
    mutual_tls: bool = setting(
        False,
        "mutual TLS between Envoy and the services, each with a certificate from a CA under"
        " WORKDIR/ca naming it by SPIFFE ID (WORKDIR/certs/NAME; renew one with `shopmesh"
        " ca issue NAME --out WORKDIR/certs/NAME --ca-dir WORKDIR/ca`, no restart)",
    )

    def certificate_dir(self, name: str) -> pathlib.Path:
        """The certificate directory of holder `name` under mutual TLS."""
        return self.workdir / "certs" / name


def store_flags(location: Location) -> dict[str, str]:
    """The flags that point a service at its database."""
    if isinstance(location, ServiceDatabase):
        return {"db_url": location.url, "db_password_file": str(location.password_file)}
    return {"db_path": str(location)}


def http_get(
    url: str, timeout: float = 2.0, context: ssl.SSLContext | None = None
) -> tuple[int, str]:
    """(status, body) of a GET, (0, "") if nothing answers; `context` for https://."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


@dataclass
class System:
    settings: Settings
    consul: Process
    controlplane: ServiceProcess
    inventory: list[ServiceProcess]
    payment: list[ServiceProcess]
    order: list[ServiceProcess]
    envoy: Process
    broker: NatsServer | None
    """NATS; None with `Settings.events` off."""
    keys: tokens.Keys
    databases: dict[str, Location]
    """Each service's database (shopmesh.check reads them)."""
    cluster: postgres.Cluster | None = None
    """The PostgreSQL cluster this system started (`Settings.postgres`), if any."""
    notification: list[ServiceProcess] = field(default_factory=list)
    smtp_sink: ServiceProcess | None = None
    """The local SMTP sink (unset `Settings.smtp`), writing to `maildir`."""
    reporting: list[ServiceProcess] = field(default_factory=list)
    """The read model (services.reporting): one instance, fed from NATS."""

    @property
    def maildir(self) -> pathlib.Path:
        """Where the local sink delivers the notifications (one file each under new/)."""
        return self.settings.workdir / "mail"

    @property
    def nats(self) -> NatsServer:
        """NATS, which runs unless `Settings.events` is off."""
        if self.broker is None:
            raise RuntimeError("this system runs with events off: no NATS")
        return self.broker

    @property
    def ports(self) -> Ports:
        return self.settings.ports

    @property
    def public_target(self) -> str:
        return f"127.0.0.1:{self.ports.public}"

    @property
    def consul_http(self) -> str:
        return f"127.0.0.1:{self.ports.consul_http}"

    def instances(self) -> list[ServiceProcess]:
        return [*self.inventory, *self.payment, *self.order, *self.notification]

    def parts(self) -> list[Process]:
        """Every process of the system, in the order they start."""
        server = [self.cluster.process] if self.cluster is not None else []
        return [
            *server,
            *([self.broker] if self.broker is not None else []),
            *([self.smtp_sink] if self.smtp_sink is not None else []),
            self.consul,
            self.controlplane,
            *self.instances(),
            *self.reporting,
            self.envoy,
        ]

    def token(self, user: str, *scopes: str, ttl: int = tokens.DEFAULT_TTL_SECONDS) -> str:
        return tokens.issue(user, scopes, ttl, self.keys.private_pem.parent)

    def healthy_endpoints(self) -> dict[str, int]:
        """Per cluster, how many endpoints Envoy considers healthy now."""
        status, body = http_get(f"http://127.0.0.1:{self.ports.admin}/clusters?format=json")
        if status != 200:
            return {}
        counts: dict[str, int] = {}
        for cluster in json.loads(body).get("cluster_statuses", []):
            healthy = 0
            for host in cluster.get("host_statuses", []):
                health = host.get("health_status", {})
                if health.get("eds_health_status", "HEALTHY") == "HEALTHY" and not any(
                    value is True for key, value in health.items() if key.startswith("failed")
                ):
                    healthy += 1
            counts[cluster["name"]] = healthy
        return counts

    def envoy_ready(self) -> bool:
        """Envoy LIVE (its listeners up) and a healthy endpoint for every instance."""
        if not self.envoy.is_ready():
            return False
        counts = self.healthy_endpoints()
        return all(
            counts.get(name, 0) >= len(group)
            for name, group in (
                ("inventory", self.inventory),
                ("payment", self.payment),
                ("order", self.order),
                ("notification", self.notification),
                ("reporting", self.reporting),
            )
        )

    def stats(self, prefix: str) -> dict[str, int]:
        """Envoy's counters and gauges whose names start with `prefix`."""
        status, body = http_get(f"http://127.0.0.1:{self.ports.admin}/stats?filter=^{prefix}")
        found = {}
        for line in body.splitlines() if status == 200 else ():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                found[name] = int(value)
        return found

    def stop(self) -> None:
        """Stops everything by PID, in order: the order service (it calls the others,
        through Envoy, while it drains), then inventory and payment; each deregisters
        from Consul as it stops, so Consul must still be up. Then NATS and the PostgreSQL
        server, which nothing uses any more, then the control plane and Envoy, and Consul
        last."""
        server = [self.cluster.process] if self.cluster is not None else []
        for tier in (
            [*self.order, *self.reporting],
            [*self.inventory, *self.payment, *self.notification],
            [
                *([self.broker] if self.broker is not None else []),
                *server,
                *([self.smtp_sink] if self.smtp_sink is not None else []),
            ],
            [self.controlplane, self.envoy],
            [self.consul],
        ):
            stop_together(tier)

    def renew_certificates(self) -> None:
        """Under mutual TLS, a new certificate for every holder: the services and the
        control plane (for Envoy, over SDS) pick theirs up by themselves; Consul's agent
        and the NATS server re-read their files on SIGHUP."""
        if not self.settings.mutual_tls:
            return
        issue_certificates(self.settings, lambda _: None)
        self.consul.signal(signal.SIGHUP)
        if self.broker is not None:
            self.broker.signal(signal.SIGHUP)  # nats-server reloads its config and files
        if self.cluster is not None:
            self.cluster.reload_certificate()

    # Restarts, for operators and fault tests.

    def restart_consul(self, kill: bool = False) -> None:
        """Stops Consul (SIGTERM, or kill -9) and starts it again on the same data dir."""
        if kill:
            self.consul.kill()
        else:
            self.consul.stop()
        self.consul.start()
        self.consul.wait_until(
            self.consul.is_ready, "Consul electing itself leader", READY_TIMEOUT_SECONDS
        )


def consul_has_leader(http_address: str, tls_dir: pathlib.Path | None = None) -> bool:
    """Whether the agent knows a leader; over HTTPS with `tls_dir`'s certificate if set."""
    context = None
    if tls_dir is not None:
        context = ssl.create_default_context(cafile=tls_dir / "ca.pem")
        context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
    scheme = "https" if context is not None else "http"
    status, body = http_get(f"{scheme}://{http_address}/v1/status/leader", context=context)
    return status == 200 and body.strip() not in ("", '""')


def consul_process(settings: Settings) -> Process:
    """The Consul server agent, ready once it has elected itself leader."""
    ports = settings.ports
    data = settings.workdir / "consul"
    data.mkdir(parents=True, exist_ok=True)
    http_address = f"127.0.0.1:{ports.consul_http}"
    operator = settings.certificate_dir("operator") if settings.mutual_tls else None
    return Process(
        "consul",
        settings.workdir / "consul.log",
        [
            tool("consul"),
            "agent",
            "-server",
            "-bootstrap-expect=1",
            "-node=shopmesh",
            "-bind=127.0.0.1",
            "-advertise=127.0.0.1",
            "-client=127.0.0.1",
            f"-data-dir={data}",
            *consul_http_flags(settings),
            f"-dns-port={ports.consul_dns}",
            f"-server-port={ports.consul_server}",
            f"-serf-lan-port={ports.consul_serf}",
            "-serf-wan-port=-1",
            "-grpc-port=-1",
            "-log-level=warn",
            "-hcl",
            "performance { raft_multiplier = 1 }",
        ],
        ready=lambda: consul_has_leader(http_address, operator),
    )


def consul_http_flags(settings: Settings) -> list[str]:
    """Plain HTTP on the Consul port; under mutual TLS the locked-down agent's config file
    instead (shopmesh/consul_security.py: HTTPS there, ACLs, gossip encryption)."""
    if not settings.mutual_tls:
        return [f"-http-port={settings.ports.consul_http}"]
    config = consul_security.agent_config(
        consul_secrets(settings), settings.certificate_dir("consul"), settings.ports.consul_http
    )
    path = consul_security.write_agent_config(settings.workdir / "consul-agent.json", config)
    return [f"-config-file={path}"]


def consul_secrets(settings: Settings) -> consul_security.ConsulSecrets:
    return consul_security.ConsulSecrets(settings.workdir / "consul-secrets")


def operator_access(settings: Settings) -> ConsulAccess:
    """shopmesh's own access to the locked-down Consul: the bootstrap token, over HTTPS."""
    return ConsulAccess(
        f"127.0.0.1:{settings.ports.consul_http}",
        consul_secrets(settings).token_file("master"),
        settings.certificate_dir("operator"),
    )


def create_consul_tokens(settings: Settings) -> None:
    """Under mutual TLS, the agent's and every Consul client's token (once: kept)."""
    if settings.mutual_tls:
        consul_security.create_tokens(
            operator_access(settings), consul_secrets(settings), ["shopmesh"], CONSUL_CLIENTS
        )


CONSUL_CLIENTS = ("controlplane", *postgres.SERVICES)
"""Who registers in Consul (and so has a Consul token of its own)."""
DIALLED_BY_ADDRESS = ("consul", "postgres")
"""Servers whose clients (HTTP libraries, libpq's verify-full) check the address they
dial against the certificate: theirs name 127.0.0.1 too."""
HOLDERS = ("gateway", "consul", "nats", "postgres", "operator", *CONSUL_CLIENTS)
"""Who gets a certificate under mutual TLS: Envoy, Consul's agent, the NATS and the
PostgreSQL servers, shopmesh's own calls (Consul's readiness and tokens; the tests' NATS
clients), the control plane and each service."""
RENEW_EVERY_SECONDS = ca.DEFAULT_TTL_SECONDS / 3
"""How often `shopmesh run --mutual-tls` renews every certificate: a third of a lifetime,
so one missed renewal still leaves a valid certificate."""


def issue_certificates(settings: Settings, progress: Callable[[str], None]) -> None:
    """Under mutual TLS, a CA under WORKDIR/ca (made once) and a fresh certificate for
    every holder."""
    if not settings.mutual_tls:
        return
    progress("issuing certificates")
    authority = ca.ensure_ca(settings.workdir / "ca")
    for name in HOLDERS:
        # Consul's clients are HTTP libraries that dial it by address and check it.
        addresses = ("127.0.0.1",) if name in DIALLED_BY_ADDRESS else ()
        ca.issue(authority, name, settings.certificate_dir(name), addresses=addresses)
    consul_secrets(settings).ensure(CONSUL_CLIENTS)


def nats_process(settings: Settings) -> NatsServer:
    """The NATS server with JetStream, its store in `<workdir>/nats`."""
    workdir = settings.workdir
    security = None
    if settings.mutual_tls:  # TLS only, and each service its own subjects
        security = nats_security.server_config(settings.certificate_dir("nats"))
    return NatsServer(
        workdir / "nats",
        workdir / "nats.log",
        settings.ports.nats,
        settings.ports.nats_monitor,
        security,
    )


def envoy_settings(settings: Settings, keys: tokens.Keys) -> EnvoySettings:
    """What gateway/envoy.yaml is rendered with for this system."""
    ports = settings.ports
    return EnvoySettings(
        public_port=ports.public,
        internal_port=ports.internal,
        admin_port=ports.admin,
        xds_port=ports.xds,
        public_address=settings.public_address,
        jwks_file=str(keys.jwks.resolve()),
        descriptor_file=str(REPO / "gen" / "descriptor.binpb"),
        # Envoy checks what shopmesh.tokens signs: one source for both.
        jwt_issuer=tokens.ISSUER,
        jwt_audience=tokens.AUDIENCE,
        # The order service checks its create wait against the same constant at start.
        order_try_timeout_seconds=GATEWAY_TRY_TIMEOUT_SECONDS,
        limits=settings.envoy_limits,
        mutual_tls=settings.mutual_tls,
    )


def envoy_process(settings: Settings, keys: tokens.Keys) -> Process:
    """Envoy on the config rendered for `settings`, ready once its admin says it is LIVE
    (initialised: listeners up, the first endpoints fetched from the control plane, or
    given up on after Envoy's 15 s initial fetch timeout); started again, it reads the
    same file."""
    config = write(envoy_settings(settings, keys), settings.workdir / "envoy.yaml")
    admin = f"http://127.0.0.1:{settings.ports.admin}/ready"
    return Process(
        "envoy",
        settings.workdir / "envoy.log",
        [
            tool("envoy"),
            *("-c", str(config), "--disable-hot-restart", "--log-level", "warn"),
            *("--concurrency", str(settings.envoy_concurrency)),
        ],
        ready=lambda: http_get(admin)[0] == 200,
    )


def service_flags(
    name: str, settings: Settings, database: Location, nats_url: str, smtp: str
) -> dict[str, str]:
    """The flags of each instance of service `name` (but Consul's); `nats_url` "" with
    events off."""
    extra: dict[str, str] = {"seed_file": str(settings.seed_file)}
    if name == "order":
        internal = f"127.0.0.1:{settings.ports.internal}"
        extra = {"inventory_target": internal, "payment_target": internal}
    if name == "notification":
        extra["smtp"] = smtp
    # One database per service, shared by all its instances, so a restart keeps state.
    extra.update(store_flags(database))
    extra["nats_url"] = nats_url
    if not settings.events:
        extra["events"] = "false"
    extra.update(tls_flags(name, settings))
    extra.update(settings.service_settings.get(name, {}))
    return extra


def controlplane_flags(settings: Settings, consul_http: str) -> dict[str, str]:
    """What the control plane watches, and (under mutual TLS) the certificate it sends
    Envoy over SDS."""
    flags = {"watch_consul_http": consul_http}
    if settings.mutual_tls:
        flags["envoy_tls_dir"] = str(settings.certificate_dir("gateway"))
        flags.update(consul_flags("controlplane", settings))
    return flags


def tls_flags(name: str, settings: Settings) -> dict[str, str]:
    """A service's certificate under mutual TLS, and its Consul token and HTTPS; none in
    plaintext."""
    if not settings.mutual_tls:
        return {}
    return {
        "tls_dir": str(settings.certificate_dir(name)),
        **consul_flags(name, settings),
    }


def consul_flags(name: str, settings: Settings) -> dict[str, str]:
    """How holder `name` reaches the locked-down Consul: its token, its certificate."""
    return {
        "consul_token_file": str(consul_secrets(settings).token_file(name)),
        "consul_tls_dir": str(settings.certificate_dir(name)),
    }


def smtp_sink(settings: Settings) -> ServiceProcess | None:
    """The local SMTP sink, started, writing to `<workdir>/mail`; None with `smtp` set or
    events off."""
    if settings.smtp or not settings.events:
        return None
    return sink_process(settings.workdir, settings.workdir / "mail").start()


def reporting_process(settings: Settings, database: Location, nats_url: str) -> ServiceProcess:
    """The read model, one instance (its consumer's batches are one writer's), started;
    its product names come from inventory through Envoy's internal listener."""
    return spawn_service(
        "reporting",
        settings.workdir,
        settings={
            "consul_http": f"127.0.0.1:{settings.ports.consul_http}",
            **store_flags(database),
            "nats_url": nats_url,
            "inventory_target": f"127.0.0.1:{settings.ports.internal}",
            **tls_flags("reporting", settings),
            **settings.service_settings.get("reporting", {}),
        },
    )


def start_databases(
    settings: Settings, started: list[Process], progress: Callable[[str], None]
) -> tuple[postgres.Cluster | None, dict[str, Location]]:
    """Each service's database: a SQLite file under the workdir, a database in the
    PostgreSQL cluster started now (`Settings.postgres`, added to `started`), or the one
    `Settings.databases` names."""
    cluster = None
    databases: dict[str, Location] = {
        name: settings.workdir / f"{name}.db" for name in postgres.SERVICES
    }
    if settings.postgres:
        progress("starting postgresql")
        secure = settings.certificate_dir("postgres") if settings.mutual_tls else None
        cluster = postgres.Cluster(settings.workdir, postgres.Settings(tls_dir=secure))
        started.append(cluster.start().process)
        for name in databases:
            database = cluster.service_database(name)
            if secure is not None:  # TLS, with the service's certificate as well
                url = postgres.tls_url(database.url, settings.certificate_dir(name))
                database = replace(database, url=url)
            databases[name] = database
    databases.update(settings.databases)
    return cluster, databases


def start(settings: Settings, progress: Callable[[str], None] = lambda _: None) -> System:
    """Starts every part and returns once all are healthy; StartError (everything
    started so far stopped again) if one is not. `progress` hears each step as a phrase
    ("starting consul")."""
    settings = replace(settings, ports=settings.ports.resolved())
    workdir = settings.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    keys = tokens.ensure_keys(settings.keys_dir or workdir / "jwt")
    ports = settings.ports
    consul_http = f"127.0.0.1:{ports.consul_http}"
    started: list[Process] = []
    try:
        issue_certificates(settings, progress)
        cluster, databases = start_databases(settings, started, progress)

        progress("starting nats and consul" if settings.events else "starting consul")
        nats = nats_process(settings).start() if settings.events else None
        started.extend([nats] if nats is not None else [])
        consul = consul_process(settings).start()
        started.append(consul)
        sink = smtp_sink(settings)
        started.extend([sink] if sink is not None else [])
        if nats is not None:
            nats.wait_until(nats.is_ready, "JetStream starting", READY_TIMEOUT_SECONDS)
        consul.wait_until(consul.is_ready, "Consul electing itself leader", READY_TIMEOUT_SECONDS)
        create_consul_tokens(settings)

        progress("starting the control plane, the services and envoy")
        registered = {"consul_http": consul_http}
        controlplane = spawn_service(
            "controlplane",
            workdir,
            port=ports.xds,
            module="gateway.controlplane",
            settings={**registered, **controlplane_flags(settings, consul_http)},
        )
        started.append(controlplane)
        groups: dict[str, list[ServiceProcess]] = {}
        smtp = sink.wait_ready().target if sink is not None else settings.smtp
        nats_url = nats.url if nats is not None else ""
        # With events off, nothing consumes events: no notification, no reporting.
        consumers = ("notification",) if settings.events else ()
        for name in ("inventory", "payment", "order", *consumers):
            extra = service_flags(name, settings, databases[name], nats_url, smtp)
            groups[name] = []
            for n in range(1, settings.instances + 1):
                instance = spawn_service(
                    name, workdir, settings={**registered, **extra}, instance=n
                )
                groups[name].append(instance)
                started.append(instance)
        reporting = [reporting_process(settings, databases["reporting"], nats_url)] if nats else []
        started += [*reporting, envoy := envoy_process(settings, keys).start()]
        for process in started:
            if isinstance(process, ServiceProcess):
                process.wait_ready()
        system = System(
            settings,
            consul,
            controlplane,
            groups["inventory"],
            groups["payment"],
            groups["order"],
            envoy,
            nats,
            keys,
            databases,
            cluster,
            groups.get("notification", []),
            sink,
            reporting,
        )
        progress("waiting until envoy sees every instance healthy")
        envoy.wait_until(
            system.envoy_ready, "a healthy endpoint for every instance", READY_TIMEOUT_SECONDS
        )
        return system
    except BaseException:
        for process in reversed(started):
            process.stop()
        raise
