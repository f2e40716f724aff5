"""Typed settings read once at start, from flags and SHOP_* environment variables.

Each service declares a frozen dataclass of settings (see `ServerConfig`); `load` builds
its command line from the fields, takes each value from the flag, else the environment
variable SHOP_<NAME>, else the default, and fails with every problem listed at once.
Nothing else in the code reads os.environ.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import pathlib
import stat
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from services.common import db, tls
from services.common.database import is_server_url
from services.common.jetstream import JetStreamSettings
from services.common.postgresql import PoolSettings, redacted
from services.common.registration import ConsulAccess

ENV_PREFIX = "SHOP_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

T = TypeVar("T", bound="ServerConfig")

POOL = PoolSettings()
JETSTREAM = JetStreamSettings()


class ConfigError(Exception):
    """Bad settings, every problem listed; the process reports them and exits."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = tuple(problems)


def setting(default: Any, help: str) -> Any:
    """A config field with its help text (shown by --help and in docs/architecture.md)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerConfig:
    """Settings every service has."""

    host: str = setting("127.0.0.1", "address to listen on (loopback unless you mean it)")
    port: int = setting(0, "port to listen on; 0 picks a free one")
    ready_file: pathlib.Path | None = setting(
        None, "file written with the bound port and pid once the service is serving"
    )
    grace_seconds: float = setting(5.0, "how long in-flight calls may finish on SIGTERM")
    consul_http: str = setting(
        "", "host:port of the Consul agent's HTTP API to register with; unset: no registration"
    )
    advertise_address: str = setting(
        "", "IP address other hosts reach this instance at (registered in Consul); unset: host"
    )
    consul_token_file: pathlib.Path | None = setting(
        None, "file holding this process's Consul ACL token (owner-only); unset: no token"
    )
    consul_tls_dir: pathlib.Path | None = setting(
        None,
        "call Consul's HTTP API over HTTPS with the certificate in this directory (an agent"
        " that verifies incoming certificates); unset: plain HTTP",
    )
    registration_interval_seconds: float = setting(
        2.0, "how often to check that Consul still has this instance, and re-register if not"
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    tls_dir: pathlib.Path | None = setting(
        None,
        "mutual TLS: serve (and call) with the certificate in this directory (cert.pem,"
        " key.pem, ca.pem: `shopmesh ca issue`), renewed files picked up without a restart;"
        " unset: plaintext, which listens on loopback only",
    )
    allowed_callers: str = setting(
        "gateway",
        "under mutual TLS, the identities (names, comma-separated) whose calls are served;"
        " any certificate from the CA may call the health service",
    )

    def consul_access(self, http_address: str) -> ConsulAccess:
        """How this process reaches the agent at `http_address` (its token, its HTTPS)."""
        return ConsulAccess(http_address, self.consul_token_file, self.consul_tls_dir)

    @property
    def tls_files(self) -> tls.CertificateFiles | None:
        """The certificate to serve and call with; None: plaintext."""
        return tls.CertificateFiles(self.tls_dir) if self.tls_dir is not None else None

    def problems(self) -> list[str]:
        """Every problem with these settings; services add their own checks."""
        found = []
        if self.tls_dir is None and not is_loopback(self.host):
            found.append(
                f"host {self.host!r} is not a loopback address: plaintext trusts every caller"
                " that can connect, so it listens on loopback only (set tls_dir to serve"
                " mutual TLS on other addresses)"
            )
        elif self.tls_dir is not None and not self.tls_dir.is_dir():
            found.append(f"tls_dir {self.tls_dir} is not a directory")
        for name in ("consul_token_file", "consul_tls_dir"):
            path = getattr(self, name)
            if path is not None and not path.exists():
                found.append(f"{name} {path} does not exist")
        callers = [n.strip() for n in self.allowed_callers.split(",")]
        if not all(tls.NAME_PATTERN.fullmatch(n) for n in callers):
            found.append(
                f"allowed_callers must be names ({tls.NAME_PATTERN.pattern}) separated by"
                f" commas, got {self.allowed_callers!r}"
            )
        if not 0 <= self.port <= 65535:
            found.append(f"port must be 0..65535, got {self.port}")
        if self.grace_seconds < 0:
            found.append(f"grace_seconds must be >= 0, got {self.grace_seconds}")
        if self.registration_interval_seconds <= 0:
            found.append("registration_interval_seconds must be > 0")
        if self.consul_http and not is_host_port(self.consul_http):
            found.append(f"consul_http must be host:port, got {self.consul_http!r}")
        advertised = self.advertise_address or self.host
        if self.consul_http and not _is_ip(advertised):
            found.append(
                f"advertise_address must be an IP address Envoy can reach, got {advertised!r}"
                " (set --advertise-address when --host is not an IP)"
            )
        elif self.consul_http and ipaddress.ip_address(advertised).is_unspecified:
            found.append("advertise_address must be set when --host is 0.0.0.0 or ::")
        if self.log_level not in LOG_LEVELS:
            found.append(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        return found


def _parser_for(kind: Any) -> Callable[[str], Any]:
    """How to turn a flag or environment string into the field's type."""
    if isinstance(kind, types.UnionType):  # X | None
        inner = [k for k in typing.get_args(kind) if k is not type(None)]
        parse = _parser_for(inner[0])
        return lambda text: None if text == "" else parse(text)
    if kind is bool:
        return lambda text: {"1": True, "true": True, "0": False, "false": False}[text.lower()]
    return typing.cast(Callable[[str], Any], kind)


@dataclass(frozen=True)
class StoreConfig(ServerConfig):
    """Settings of a service that keeps its state in a database: a SQLite file (db_path),
    or a PostgreSQL database when db_url is set."""

    db_path: pathlib.Path = setting(
        pathlib.Path("var/service.db"), "SQLite database file (when db_url is unset)"
    )
    db_url: str = setting(
        "",
        "PostgreSQL database, postgresql://ROLE@HOST:PORT/DB, with no password in it (it would"
        " show in ps): the password is read from db_password_file. Set, it wins over db_path;"
        " unset: SQLite at db_path",
    )
    db_password_file: pathlib.Path | None = setting(
        None, "file holding db_url's role's password, readable by its owner alone (mode 0600)"
    )
    db_synchronous: str = setting(
        db.SYNCHRONOUS, "SQLite synchronous mode: FULL survives power loss, NORMAL only crashes"
    )
    db_pool_size: int = setting(POOL.size, "PostgreSQL: connections this instance opens at most")
    db_acquire_timeout_seconds: float = setting(
        POOL.acquire_timeout_seconds,
        "PostgreSQL: how long a transaction waits for a free pooled connection before it"
        " answers STORAGE_UNAVAILABLE",
    )
    db_lock_timeout_ms: int = setting(
        POOL.lock_timeout_ms,
        "PostgreSQL: how long a statement waits for a row lock (lock_timeout) before it"
        " answers STORAGE_UNAVAILABLE",
    )
    db_statement_timeout_ms: int = setting(
        POOL.statement_timeout_ms, "PostgreSQL: the longest one statement may run"
    )
    seed_file: pathlib.Path | None = setting(
        None, "JSON file of demo data loaded at start (existing rows are kept)"
    )
    events: bool = setting(
        True,
        "append each state change's event to the outbox (false: no outbox row is written;"
        " the order log stays, it is the order's history; for the benchmark's events off)",
    )
    nats_url: str = setting(
        "",
        "NATS server the outbox relay publishes events to, nats://HOST:PORT (tls://HOST:PORT:"
        " TLS with tls_dir's certificate); unset: no relay runs (events wait in the outbox);"
        " `shopmesh run` sets it",
    )
    outbox_lease_seconds: float = setting(
        10.0,
        "how long the outbox relay's lease lasts unrenewed; past it another instance's"
        " relay publishes. Far below the stream's duplicates window, and more than 4x"
        " outbox_publish_timeout_seconds",
    )
    outbox_publish_timeout_seconds: float = setting(
        JETSTREAM.publish_timeout_seconds,
        "how long the relay waits for one event's PubAck before it backs off",
    )
    outbox_batch_size: int = setting(
        100, "events the relay reads, publishes and marks sent per batch"
    )
    outbox_poll_interval_seconds: float = setting(
        1.0,
        "how often the relay looks for events committed by other instances (its own"
        " process's wake it at once), and a standby relay for a free lease",
    )
    outbox_linger_seconds: float = setting(
        0.05,
        "how long the relay waits after a commit woke it before it reads a batch, so that"
        " the commits of that time share one read, one wave and one mark (less CPU per"
        " event under load, at most that much more lag); 0: at once",
    )
    outbox_retention_seconds: float = setting(
        3600.0, "how long sent events stay in the outbox before they are pruned"
    )
    outbox_prune_interval_seconds: float = setting(
        60.0, "how often the relay prunes sent events past the retention"
    )
    outbox_max_backoff_seconds: float = setting(
        5.0, "longest wait of the relay between two tries while publishing fails"
    )
    outbox_exit_after_publishes: int = setting(
        0,
        "TEST ONLY: after the Nth event this process published is acknowledged, and before"
        " it is marked sent, the process exits at once (as a kill -9 there would); 0: never",
    )
    nats_reconnect_max_seconds: float = setting(
        JETSTREAM.reconnect_max_seconds,
        "the longest wait between two attempts to reach NATS, which are made for ever",
    )
    events_max_age_seconds: float = setting(
        JETSTREAM.max_age_seconds,
        "how long the SHOP_EVENTS stream keeps an event, so how far back a consumer rebuilt"
        " from the stream's start reaches; the same for every service",
    )
    events_max_bytes: int = setting(
        JETSTREAM.max_bytes,
        "the most SHOP_EVENTS stores; past it the oldest events go first; the same for every"
        " service",
    )
    events_duplicate_window_seconds: float = setting(
        JETSTREAM.duplicate_window_seconds,
        "how long NATS drops a re-publish of an event id it has stored; the same for every service",
    )

    @property
    def db_location(self) -> str | pathlib.Path:
        """Where the store is: db_url if set, else the SQLite file db_path (`Store.open`)."""
        return self.db_url or self.db_path

    @property
    def jetstream(self) -> JetStreamSettings:
        """How the service uses NATS (`services.common.jetstream`)."""
        return JetStreamSettings(
            url=self.nats_url,
            max_age_seconds=self.events_max_age_seconds,
            max_bytes=self.events_max_bytes,
            duplicate_window_seconds=self.events_duplicate_window_seconds,
            publish_timeout_seconds=self.outbox_publish_timeout_seconds,
            reconnect_max_seconds=self.nats_reconnect_max_seconds,
            tls_dir=self.tls_dir if self.nats_url.startswith("tls://") else None,
        )

    @property
    def db_pool(self) -> PoolSettings:
        """How the store uses a PostgreSQL server (`Store.open`'s `pool`)."""
        return PoolSettings(
            size=self.db_pool_size,
            acquire_timeout_seconds=self.db_acquire_timeout_seconds,
            lock_timeout_ms=self.db_lock_timeout_ms,
            statement_timeout_ms=self.db_statement_timeout_ms,
        )

    def problems(self) -> list[str]:
        found = super().problems()
        if self.db_synchronous not in db.SYNCHRONOUS_MODES:
            found.append(
                f"db_synchronous must be one of {', '.join(db.SYNCHRONOUS_MODES)},"
                f" got {self.db_synchronous!r}"
            )
        if self.seed_file is not None and not self.seed_file.is_file():
            found.append(f"seed_file {self.seed_file} does not exist")
        for name in (
            "db_pool_size",
            "db_acquire_timeout_seconds",
            "db_lock_timeout_ms",
            "db_statement_timeout_ms",
            "outbox_lease_seconds",
            "outbox_publish_timeout_seconds",
            "outbox_batch_size",
            "outbox_poll_interval_seconds",
            "outbox_retention_seconds",
            "outbox_prune_interval_seconds",
            "outbox_max_backoff_seconds",
        ):
            if getattr(self, name) <= 0:
                found.append(f"{name} must be > 0, got {getattr(self, name):g}")
        if not 0 <= self.outbox_linger_seconds < self.outbox_poll_interval_seconds:
            found.append(
                "outbox_linger_seconds must be >= 0 and below outbox_poll_interval_seconds,"
                f" got {self.outbox_linger_seconds:g}"
            )
        if self.outbox_lease_seconds <= 4 * self.outbox_publish_timeout_seconds:
            # A relay trusts its lease for half of it and publishes only while a publish
            # timeout of that is left: a lease of 4x leaves room for a batch between renewals.
            found.append(
                "outbox_lease_seconds must be more than 4x outbox_publish_timeout_seconds,"
                f" got {self.outbox_lease_seconds:g} and {self.outbox_publish_timeout_seconds:g}"
            )
        if self.db_url:
            found.extend(url_problems(self.db_url))
            if self.db_password_file is None:
                found.append("db_url needs db_password_file: the file holding its role's password")
            else:
                found.extend(password_file_problems(self.db_password_file))
        elif self.db_password_file is not None:
            found.append(
                "db_password_file is only for db_url (a PostgreSQL database); SQLite needs none"
            )
        found.extend(jetstream_problems(self))
        return found


def jetstream_problems(config: StoreConfig) -> list[str]:
    """What is wrong with the nats_* and events_* settings."""
    found = []
    if config.nats_url:
        parts = urllib.parse.urlsplit(config.nats_url)
        try:
            port = parts.port
        except ValueError:
            port = None
        shaped = parts.scheme in ("nats", "tls") and parts.hostname and port
        if not shaped or parts.path not in ("", "/"):
            found.append(f"nats_url must be nats://HOST:PORT, got {config.nats_url!r}")
        elif parts.scheme == "tls" and config.tls_dir is None:
            found.append("nats_url tls://... needs tls_dir: the certificate NATS maps to a user")
    for name in (
        "nats_reconnect_max_seconds",
        "events_max_age_seconds",
        "events_max_bytes",
        "events_duplicate_window_seconds",
    ):
        if getattr(config, name) <= 0:
            found.append(f"{name} must be > 0, got {getattr(config, name):g}")
    window = config.events_duplicate_window_seconds
    if window > config.events_max_age_seconds:
        # The server refuses such a stream: it could not remember an id for longer.
        found.append("events_duplicate_window_seconds must be at most events_max_age_seconds")
    if config.outbox_lease_seconds >= window:
        # A relay that lost its lease mid-batch leaves events a successor publishes again:
        # the re-publish must land inside the window to be dropped.
        found.append("outbox_lease_seconds must be less than events_duplicate_window_seconds")
    if config.outbox_publish_timeout_seconds >= window:
        # A publish that timed out is published again: the second must land in the window.
        found.append(
            "outbox_publish_timeout_seconds must be less than events_duplicate_window_seconds"
        )
    return found


def url_problems(url: str) -> list[str]:
    """What is wrong with a PostgreSQL URL for db_url (a password in it is)."""
    shape = "postgresql://ROLE@HOST:PORT/DB"
    if not is_server_url(url):
        return [
            f"db_url must be a PostgreSQL URL, {shape}, got {redacted(url)!r}"
            " (a SQLite file is db_path's)"
        ]
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None or "password" in urllib.parse.parse_qs(parts.query):
        # Shown without the URL: the point is that the password goes nowhere it can be read.
        return [
            "db_url must not contain a password: a command line shows in `ps` to every user"
            " of the host, and the environment to root; put it in a file of mode 0600 and"
            " name it with db_password_file"
        ]
    found = []
    try:
        port = parts.port
    except ValueError:
        port = None
        found.append(f"db_url's port must be a number 1..65535, in {shape}")
    if port == 0:
        found.append(f"db_url's port must be a number 1..65535, in {shape}")
    if not parts.username:
        found.append(f"db_url must name the role to connect as, {shape}, got {url!r}")
    if not parts.hostname:
        found.append(f"db_url must name the server's host, {shape}, got {url!r}")
    if parts.path.strip("/") == "":
        found.append(f"db_url must name the database, {shape}, got {url!r}")
    return found


def password_file_problems(path: pathlib.Path) -> list[str]:
    """What is wrong with a password file: missing, not a file, empty, or readable by others."""
    try:
        info = path.stat()
    except OSError as error:
        return [f"db_password_file {path} cannot be read: {error.strerror}"]
    if not stat.S_ISREG(info.st_mode):
        return [f"db_password_file {path} is not a file"]
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return [
            f"db_password_file {path} is open to group or others (mode {mode:o}): only its owner"
            f" may read a password; chmod 600 {path}"
        ]
    if info.st_size == 0:
        return [f"db_password_file {path} is empty"]
    return []


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine: a loopback IP address, or localhost."""
    if host == "localhost":
        return True
    return _is_ip(host) and ipaddress.ip_address(host).is_loopback


def is_host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _shown(default: object) -> str:
    return "unset" if default is None or default == "" else str(default)


def load(
    cls: type[T],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str | None = None,
) -> T:
    """Reads `cls` from flags, then SHOP_* variables, then defaults; raises ConfigError."""
    environ = environ if environ is not None else {}
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__)
    for field in dataclasses.fields(cls):
        env = ENV_PREFIX + field.name.upper()
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=None,
            metavar=field.name.upper(),
            help=f"{field.metadata.get('help', '')} [env {env}, default: {_shown(field.default)}]",
        )
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in dataclasses.fields(cls):
        env = ENV_PREFIX + field.name.upper()
        text = getattr(args, field.name)
        source = f"--{field.name.replace('_', '-')}"
        if text is None and env in environ:
            text, source = environ[env], env
        if text is None:
            continue
        try:
            values[field.name] = _parser_for(hints[field.name])(text)
        except (ValueError, KeyError):
            problems.append(f"{source}={text!r} is not a valid {field.name}")
    if problems:
        raise ConfigError(problems)
    config = cls(**values)
    problems = config.problems()
    if problems:
        raise ConfigError(problems)
    return config
