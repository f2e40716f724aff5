"""The `shopmesh` command: dev tokens and the local system.

shopmesh token --user alice [--scope shop.admin] [--ttl S]   print a dev JWT
shopmesh keys                                               create the dev key pair
shopmesh check [--workdir DIR]                              check every promise in the databases
shopmesh migrate --service NAME [--db PATH|URL] [--list]    apply a service's schema migrations
shopmesh run [--instances N] [--postgres]                   run everything, restarting (make run)
shopmesh postgres [--workdir DIR]                           run the local PostgreSQL cluster
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import pathlib
import signal
import sqlite3
import sys
import time
import typing
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

import psycopg

from gateway.envoy_config import Limits
from services.common import db, migrations
from services.common.config import is_host_port, password_file_problems, url_problems
from services.common.database import is_server_url
from services.common.postgresql import read_password
from shopmesh import ca, check, postgres, system, tokens
from shopmesh.processes import CrashLoop, RestartPolicy, StartError, Supervisor
from shopmesh.tools import WORKDIR, MissingTool

log = logging.getLogger(__name__)

EXAMPLES = """\
shopmesh is running ({elapsed:.1f} s to healthy; logs and data in {workdir}/):
  REST + gRPC (JWT)  http://127.0.0.1:{public}
  internal hop       127.0.0.1:{internal}
  Envoy admin        http://127.0.0.1:{admin}
  Consul             http://127.0.0.1:{consul}
                     DNS :{consul_dns}, server RPC :{consul_server}, serf LAN :{consul_serf}
  control plane      127.0.0.1:{xds}
  NATS JetStream     {nats}
  SMTP               {smtp}
  services           {services}
  databases          {databases}

A token for alice (valid 1 h; make others with `.venv/bin/shopmesh token --user NAME`):
  export TOKEN={token}

REST through Envoy:
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:{public}/v1/orders \\
    -d '{{"request_id": "demo-1", "line_items": [{{"sku": "SKU-TEA-001", "quantity": 2}}]}}'
gRPC through Envoy:
  .venv/bin/grpcurl -plaintext -protoset gen/descriptor.binpb -H "authorization: Bearer $TOKEN" \\
    127.0.0.1:{public} shop.order.v1.OrderService/ListOrders
Each confirmed or cancelled order is e-mailed to its customer; see alice's:
  {mail_hint}
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:{public}/v1/notifications
gRPC straight to the order service (no gateway: you name the caller yourself):
  .venv/bin/grpcurl -plaintext -H 'x-shop-user: alice' \\
    127.0.0.1:{order_port} shop.order.v1.OrderService/ListOrders

Press Ctrl-C to stop everything.
"""


RUN_DESCRIPTION = """\
Runs NATS (JetStream), Consul, the control plane, the services and Envoy (with
--postgres, a PostgreSQL cluster too, which the services keep their state in), and
supervises them until
Ctrl-C or SIGTERM. A part that exits is started again after {first:g} s; the wait doubles
with each further crash of that part within {window:g} s, up to {most:g} s. A part that
crashes {limit} times within {window:g} s is given up on: everything stops, exit status 1.
Stopping goes in order: the services (they deregister from Consul), then NATS and
PostgreSQL, the control plane and Envoy, then Consul.
"""


POSTGRES_RUNNING = """\
PostgreSQL is running ({how}; data and log in {root}/):
  server      {host}:{port} (SCRAM-SHA-256 only); unix socket in {run_dir}
  superuser   {superuser}, over the unix socket only; password in {superuser_file}
  databases   {databases}: each owned by the role of its name, closed to the others
  passwords   {secrets}/<role>.password (mode 0600)

Connect as a service would, e.g. inventory:
  PGPASSWORD=$(cat {example_file}) psql -h {host} -p {port} -U {example} {example}

A service keeps its state there with, e.g.:
  python -m services.{example} --db-url postgresql://{example}@{host}:{port}/{example} \\
    --db-password-file {example_file}
(`shopmesh run --postgres` starts a cluster of its own like this one and does that.)
Press Ctrl-C to stop it.
"""

POSTGRES_DESCRIPTION = """\
Runs a local PostgreSQL 15 cluster under WORKDIR/postgres (initdb the first time; as
the postgres OS user when run as root), with a database and a role for each service
({services}), until Ctrl-C or SIGTERM. Every connection authenticates with
SCRAM-SHA-256; each role's password is in WORKDIR/postgres/secrets/<role>.password
(mode 0600), kept across starts. A service connects with --db-url and --db-password-file;
`shopmesh run --postgres` runs the same cluster itself.
"""


def _token(args: argparse.Namespace) -> int:
    try:
        print(tokens.issue(args.user, tuple(args.scope), args.ttl, args.keys_dir))
    except ValueError as error:
        print(f"shopmesh token: {error}", file=sys.stderr)
        return 2
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        report = check.check_workdir(
            args.workdir,
            args.settle_seconds,
            nats_monitor_url=f"http://127.0.0.1:{args.nats_monitor}",
            quiet_seconds=args.quiet_seconds,
        )
    except (FileNotFoundError, sqlite3.Error, psycopg.Error) as error:
        print(
            f"shopmesh check: {error} (is --workdir the system's work directory?)", file=sys.stderr
        )
        return 2
    print(f"shopmesh check: {report.summary()}")
    for line in report.parked:
        print(f"needs an operator: {line}")
    for line in report.unchecked:
        print(f"not checked: {line}")
    for line in report.problems:
        print(f"PROBLEM: {line}")
    print("every promise holds" if report.ok else f"{len(report.problems)} problems")
    return 0 if report.ok else 1


def _migrate(args: argparse.Namespace) -> int:
    location: str | pathlib.Path = args.db or WORKDIR / f"{args.service}.db"
    on_server = is_server_url(location)
    problems = url_problems(str(location)) if on_server else []
    if on_server and args.db_password_file is not None:
        problems += password_file_problems(args.db_password_file)
    elif not on_server and args.db_password_file is not None:
        problems.append("--db-password-file is only for a PostgreSQL --db URL")
    if problems:
        for problem in problems:
            print(f"shopmesh migrate: {problem.replace('db_url', '--db')}", file=sys.stderr)
        return 2
    if not on_server:
        location = pathlib.Path(location)
        if (args.list or args.break_lock) and not location.is_file():
            print(f"shopmesh migrate: no database at {location}", file=sys.stderr)
            return 2
    password = read_password(args.db_password_file) if args.db_password_file is not None else None
    try:
        if args.break_lock:
            migrations.break_lock(location, password=password)
            print(f"{location}: migration lock removed")
        elif args.list:
            for migration in migrations.status(location, args.service, password=password):
                print(f"{'applied' if migration.applied else 'pending'}  {migration.id}")
        else:
            if isinstance(location, pathlib.Path):
                with contextlib.closing(db.connect(location, db.SYNCHRONOUS)):  # made, in WAL
                    applied = migrations.apply(location, args.service)
            else:
                applied = migrations.apply(location, args.service, password=password)
            done = f"applied {', '.join(applied)}" if applied else "up to date"
            print(f"{location}: {done}")
    except (migrations.MigrationError, sqlite3.Error, psycopg.Error) as error:
        print(f"shopmesh migrate: {error}", file=sys.stderr)
        return 1
    return 0


def _keys(args: argparse.Namespace) -> int:
    keys = tokens.ensure_keys(args.keys_dir)
    print(f"JWKS {keys.jwks} (kid {keys.kid}); private key {keys.private_pem}")
    return 0


def _ca_init(args: argparse.Namespace) -> int:
    authority = ca.ensure_ca(args.ca_dir, force=args.force)
    expires = authority.certificate.not_valid_after_utc
    print(f"CA {authority.cert_path} (key owner-only beside it), valid until {expires:%Y-%m-%d}")
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    try:
        authority = ca.load_ca(args.ca_dir)
        issued = ca.issue(authority, args.name, args.out, ttl_seconds=args.ttl_seconds)
    except ca.CAError as error:
        print(f"shopmesh ca issue: {error}", file=sys.stderr)
        return 2
    print(
        f"{issued.spiffe_id}: {issued.cert_path} (with the CA's), key {issued.key_path},"
        f" valid until {issued.not_after:%Y-%m-%d %H:%M:%S} UTC"
    )
    return 0


def gateway_limit(text: str) -> tuple[str, int | float]:
    """`--gateway-limit NAME=VALUE`: one field of gateway.envoy_config.Limits."""
    name, _, value = text.partition("=")
    kinds = {f.name: f.type for f in fields(Limits)}
    if name not in kinds:
        raise argparse.ArgumentTypeError(f"{name!r} is not a gateway limit")
    try:
        return name, int(value) if kinds[name] == "int" else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} wants a number, not {value!r}") from None


# The flag of each of Ports' fields: --<name>-port, but Consul's HTTP port is --consul-port.
PORT_FLAGS = {f.name: f"--{f.name.replace('_', '-')}-port" for f in fields(system.Ports)} | {
    "consul_http": "--consul-port"
}
# Settings that `shopmesh run` has a flag for, named after the field.
RUN_FLAGS = (
    "instances",
    "workdir",
    "envoy_concurrency",
    "postgres",
    "smtp",
    "events",
    "mutual_tls",
)


def add_setting_flag(
    parser: argparse.ArgumentParser,
    settings: type[Any],
    name: str,
    flag: str = "",
    shown: str = "",
) -> None:
    """A flag for one field of a settings dataclass, whose type, default and help text
    (`services.common.config.setting`) come from the field, so `--help` says what the
    code does. `shown` stands for the default in the help text."""
    field = next(f for f in fields(settings) if f.name == name)
    flag = flag or f"--{name.replace('_', '-')}"
    kind = typing.get_type_hints(settings)[name]
    if kind is bool:  # a switch: given, it turns the setting on (--no-NAME: off)
        on_by_default = field.default is True
        parser.add_argument(
            f"--no-{flag.removeprefix('--')}" if on_by_default else flag,
            dest=name,
            action="store_false" if on_by_default else "store_true",
            default=field.default,
            help=f"{field.metadata['help']} [{shown or field.default}]",
        )
        return
    parser.add_argument(
        flag,
        dest=name,
        metavar=flag.removeprefix("--").replace("-", "_").upper(),
        type=kind,
        default=field.default,
        help=f"{field.metadata['help']} [{shown or field.default}]",
    )


def run_settings(args: argparse.Namespace) -> system.Settings:
    """What `shopmesh run`'s flags ask for."""
    ports = system.Ports(**{name: getattr(args, name) for name in PORT_FLAGS})
    return system.Settings(
        workdir=args.workdir,
        ports=ports,
        instances=args.instances,
        keys_dir=args.keys_dir,
        envoy_concurrency=args.envoy_concurrency,
        envoy_limits=replace(Limits(), **dict(args.gateway_limit)),
        postgres=args.postgres,
        smtp=args.smtp,
    )


def databases_line(running: system.System) -> str:
    """Where the services keep their state, for the banner."""
    cluster = running.cluster
    if cluster is None:
        return f"SQLite: {', '.join(str(p) for p in running.databases.values())}"
    indent = "\n" + " " * 21
    return (
        f"PostgreSQL 127.0.0.1:{cluster.port}, a database and a role each for"
        f" {', '.join(running.databases)}"
        f"{indent}data in {cluster.data}, log {cluster.log_path}"
        f"{indent}passwords in {cluster.secrets}/<role>.password (mode 0600)"
    )


def nats_line(running: system.System) -> str:
    """Where NATS is, for the banner."""
    if running.broker is None:
        return "off (--no-events: no NATS, SMTP sink, notification or reporting)"
    nats = running.broker
    return f"{nats.url} (monitoring {nats.monitor_url}/jsz; store in {nats.store_dir})"


def smtp_line(running: system.System) -> str:
    """Where the notifications go, for the banner."""
    if not running.settings.events:
        return "none (--no-events)"
    if running.smtp_sink is None:
        return f"{running.settings.smtp} (--smtp)"
    return f"sink {running.smtp_sink.target}, writing each message to {running.maildir}/new"


def _run(args: argparse.Namespace) -> int:
    if args.instances < 1:
        print("shopmesh run: --instances must be at least 1", file=sys.stderr)
        return 2
    if args.envoy_concurrency < 1:
        print("shopmesh run: --envoy-concurrency must be at least 1", file=sys.stderr)
        return 2
    if args.smtp and not is_host_port(args.smtp):
        print(f"shopmesh run: --smtp must be host:port, got {args.smtp!r}", file=sys.stderr)
        return 2
    try:
        settings = run_settings(args)
    except ValueError as error:  # a limit out of range
        print(f"shopmesh run: --gateway-limit: {error}", file=sys.stderr)
        return 2
    started = time.monotonic()
    # The supervisor's restarts and give-ups, on stderr with the time they happened.
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("shopmesh").setLevel(logging.INFO)

    def progress(step: str) -> None:
        print(f"[{time.monotonic() - started:4.1f}s] {step}...", flush=True)

    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        running = system.start(settings, progress)
    except (StartError, MissingTool, psycopg.Error) as error:
        print(f"shopmesh run: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    signal.signal(signal.SIGINT, request_stop)
    ports = running.ports  # with the free ones picked
    print(
        EXAMPLES.format(
            elapsed=time.monotonic() - started,
            workdir=settings.workdir,
            public=ports.public,
            internal=ports.internal,
            admin=ports.admin,
            consul=ports.consul_http,
            consul_dns=ports.consul_dns,
            consul_server=ports.consul_server,
            consul_serf=ports.consul_serf,
            xds=ports.xds,
            nats=nats_line(running),
            services=", ".join(
                f"{s.label} :{s.port}" for s in [*running.instances(), *running.reporting]
            ),
            databases=databases_line(running),
            smtp=smtp_line(running),
            mail_hint=(
                "(not with --no-events)"
                if not settings.events
                else f"ls {running.maildir}/new"
                if running.smtp_sink is not None
                else f"(sent to {settings.smtp}; read them there)"
            ),
            token=running.token("alice"),
            order_port=running.order[0].port,
        ),
        flush=True,
    )
    # The supervisor lives here, in the parent that stays: it restarts a part that exits
    # (Envoy also needs a live parent: it asks the kernel to stop it when its parent exits).
    code = 0
    renewed = time.monotonic()

    def stop_or_renew() -> bool:
        nonlocal renewed
        if settings.mutual_tls and time.monotonic() - renewed > system.RENEW_EVERY_SECONDS:
            running.renew_certificates()
            renewed = time.monotonic()
            log.info("renewed every certificate under %s", settings.workdir / "certs")
        return stopping

    try:
        Supervisor(running.parts()).run(stop_or_renew)
    except CrashLoop as loop:
        log.error("%s. Stopping.", loop)
        code = 1
    print("stopping...", flush=True)
    running.stop()
    print("stopped.", flush=True)
    return code


def _postgres(args: argparse.Namespace) -> int:
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("shopmesh").setLevel(logging.INFO)
    cluster = postgres.Cluster(args.workdir, postgres.Settings(port=args.port))
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        cluster.start()
        cluster.ensure_databases()
    except (StartError, MissingTool, psycopg.Error) as error:
        cluster.stop()
        print(f"shopmesh postgres: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        cluster.stop()
        return 130
    signal.signal(signal.SIGINT, request_stop)
    made = cluster.initdb_seconds
    how = f"initdb {made:.1f} s, " if made is not None else "the existing cluster, "
    example = postgres.SERVICES[0]
    print(
        POSTGRES_RUNNING.format(
            how=f"{how}ready {cluster.ready_seconds:.1f} s after start",
            root=cluster.root,
            host=postgres.HOST,
            port=cluster.port,
            run_dir=cluster.run_dir,
            superuser=cluster.settings.superuser,
            superuser_file=cluster.password_file(cluster.settings.superuser),
            databases=", ".join(postgres.SERVICES),
            secrets=cluster.secrets,
            example=example,
            example_file=cluster.password_file(example),
        ),
        flush=True,
    )
    code = 0
    try:
        Supervisor([cluster.process]).run(lambda: stopping)
    except CrashLoop as loop:
        log.error("%s. Stopping.", loop)
        code = 1
    print("stopping...", flush=True)
    cluster.stop()
    print("stopped.", flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


def add_ca_commands(commands: Any) -> None:
    """`shopmesh ca init` and `shopmesh ca issue` (shopmesh/ca.py)."""
    authority = commands.add_parser(
        "ca",
        help="the local CA: service identities (SPIFFE IDs) for mutual TLS",
        description=ca.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ca_dir = ca.DEFAULT_CA_DIR
    ca_commands = authority.add_subparsers(dest="ca_command", required=True)
    init = ca_commands.add_parser("init", help="make the CA if it is not there")
    init.add_argument("--ca-dir", type=pathlib.Path, default=ca_dir, help=f"[{ca_dir}]")
    init.add_argument(
        "--force", action="store_true", help="make a new CA: the old one's certificates stop"
    )
    init.set_defaults(handler=_ca_init)
    issuing = ca_commands.add_parser(
        "issue", help="issue a holder a key and certificate (again: a renewal)"
    )
    issuing.add_argument(
        "name", help=f"the holder: a service, or envoy ({ca.NAME_PATTERN.pattern})"
    )
    issuing.add_argument(
        "--out", type=pathlib.Path, required=True, help="directory for cert.pem and key.pem"
    )
    issuing.add_argument(
        "--ttl-seconds",
        type=int,
        default=ca.DEFAULT_TTL_SECONDS,
        help=f"the certificate's lifetime, 60..{ca.MAX_TTL_SECONDS} [{ca.DEFAULT_TTL_SECONDS}]",
    )
    issuing.add_argument("--ca-dir", type=pathlib.Path, default=ca_dir, help=f"[{ca_dir}]")
    issuing.set_defaults(handler=_ca_issue)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopmesh", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keys_dir = tokens.DEFAULT_KEYS_DIR

    token = commands.add_parser("token", help="print a dev JWT for a user")
    token.add_argument("--user", required=True, help="the token's subject (the user id)")
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a scope to grant (repeatable), e.g. shop.admin",
    )
    token.add_argument(
        "--ttl",
        type=int,
        default=tokens.DEFAULT_TTL_SECONDS,
        help=f"lifetime in seconds, at most {tokens.MAX_TTL_SECONDS}"
        f" [{tokens.DEFAULT_TTL_SECONDS}]",
    )
    token.add_argument("--keys-dir", type=pathlib.Path, default=keys_dir, help=f"[{keys_dir}]")
    token.set_defaults(handler=_token)

    checking = commands.add_parser(
        "check",
        help="check the system's promises in its databases (safe on a live system)",
        description=check.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    checking.add_argument("--workdir", type=pathlib.Path, default=WORKDIR, help=f"[{WORKDIR}]")
    checking.add_argument(
        "--settle-seconds",
        type=float,
        default=check.SETTLE_SECONDS,
        help="a PENDING order that has not moved for longer, and is not parked, is a problem"
        f" [{check.SETTLE_SECONDS:g}]",
    )
    add_setting_flag(checking, system.Ports, "nats_monitor", "--nats-monitor-port")
    checking.add_argument(
        "--quiet-seconds",
        type=float,
        default=check.QUIET_SECONDS,
        help="how long to wait for the events to be quiet (outboxes sent, consumers caught"
        f" up) before leaving them unchecked [{check.QUIET_SECONDS:g}]",
    )
    checking.set_defaults(handler=_check)

    migrate = commands.add_parser(
        "migrate",
        help="apply a service's pending schema migrations (each service does at start)",
        description="Applies the service's pending migrations"
        " (services/SERVICE/migrations/{sqlite,postgresql}/*.sql, in the order of their names)"
        " to its database, as the service does whenever it starts; with several processes at"
        " once, one applies them and the others wait.",
    )
    migrate.add_argument("--service", required=True, choices=migrations.services())
    migrate.add_argument(
        "--db",
        help="the service's database: a SQLite file, or postgresql://ROLE@HOST:PORT/DB (no"
        f" password in it: --db-password-file) [{WORKDIR}/SERVICE.db]",
    )
    migrate.add_argument(
        "--db-password-file",
        type=pathlib.Path,
        help="the file (mode 0600) with the password of --db's role",
    )
    action = migrate.add_mutually_exclusive_group()
    action.add_argument(
        "--list", action="store_true", help="show each migration as applied or pending; apply none"
    )
    action.add_argument(
        "--break-lock",
        action="store_true",
        help="remove the migration lock a process killed while migrating left behind",
    )
    migrate.set_defaults(handler=_migrate)

    keys = commands.add_parser("keys", help="create the dev key pair and JWKS if missing")
    keys.add_argument("--keys-dir", type=pathlib.Path, default=keys_dir, help=f"[{keys_dir}]")
    keys.set_defaults(handler=_keys)

    add_ca_commands(commands)

    restart = RestartPolicy()
    run = commands.add_parser(
        "run",
        help="run NATS, Consul, the control plane, the services and Envoy",
        description=RUN_DESCRIPTION.format(
            first=restart.first_delay_seconds,
            most=restart.max_delay_seconds,
            window=restart.window_seconds,
            limit=restart.crash_limit,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name in RUN_FLAGS:
        add_setting_flag(run, system.Settings, name)
    for field in fields(system.Ports):
        free = "a free port" if field.default == 0 else ""
        add_setting_flag(run, system.Ports, field.name, PORT_FLAGS[field.name], shown=free)
    run.add_argument("--keys-dir", type=pathlib.Path, default=keys_dir, help=f"[{keys_dir}]")
    defaults = Limits()
    run.add_argument(
        "--gateway-limit",
        metavar="NAME=VALUE",
        type=gateway_limit,
        action="append",
        default=[],
        help="set one of Envoy's limits (repeatable; gateway/README.md), of: "
        + ", ".join(f"{f.name} [{getattr(defaults, f.name)}]" for f in fields(Limits)),
    )
    run.set_defaults(handler=_run)

    cluster = commands.add_parser(
        "postgres",
        help="run the local PostgreSQL cluster: a database and a role per service",
        description=POSTGRES_DESCRIPTION.format(services=", ".join(postgres.SERVICES)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cluster.add_argument(
        "--workdir",
        type=pathlib.Path,
        default=WORKDIR,
        help=f"the system's work directory; the cluster is in WORKDIR/postgres [{WORKDIR}]",
    )
    add_setting_flag(cluster, postgres.Settings, "port", shown="a free port")
    cluster.set_defaults(handler=_postgres)
    return parser


if __name__ == "__main__":
    sys.exit(main())
