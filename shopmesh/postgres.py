"""A local PostgreSQL 15 cluster: one database per service, each owned by a role of its
own with a password of its own, SCRAM-SHA-256 for every connection.

The cluster lives in `<workdir>/postgres`:

    data/          the cluster (initdb), owned by the server's OS user, mode 0700
    run/           its unix socket, owned by the server's OS user, mode 0700: only that
                   user and root reach it, and the superuser may log in nowhere else
    secrets/       one password file per role, `<role>.password`, owned by the caller,
                   mode 0600, in a directory of mode 0700
    postgres.log   initdb's and the server's output

initdb and the server refuse to run as root: when the caller is root they run as the
`postgres` OS user (Debian's package creates it), otherwise as the caller. The server is
a `Process` whose PID is the postmaster's (setpriv drops to the user and execs; runuser
stays in between as a parent, which passes no SIGINT on and answers SIGTERM with SIGTERM
and, 2 s later, SIGKILL: measured with util-linux 2.38). Starting again on the same
workdir reuses the cluster, its roles and their passwords: the files are the truth, and
each start sets each role's password from its file. Passwords reach the server only as
SCRAM verifiers computed here (libpq's PQencryptPasswordConn), so the plaintext is in no
statement, log or WAL record; a DSN with the password in it is built when asked for and
never written down.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import re
import secrets
import signal
import stat
import subprocess
import time
import urllib.parse
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from services.common.config import setting
from shopmesh.processes import STOP_TIMEOUT_SECONDS, Process, StartError
from shopmesh.tools import MissingTool, free_ports

SERVICES = ("inventory", "payment", "order", "notification", "reporting")
"""The services that get a database and a role each, named after the service: every
service with a store."""

HOST = "127.0.0.1"
"""The one TCP address the server listens on."""

SCRAM = "scram-sha-256"

# A role and database name that needs no quoting anywhere (SQL, pg_hba's `sameuser`,
# file names, DSNs) and fits PostgreSQL's 63-byte identifiers.
NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class Settings:
    """How the local cluster is run."""

    bin_dir: pathlib.Path = setting(
        pathlib.Path("/usr/lib/postgresql/15/bin"),
        "PostgreSQL 15's initdb and postgres (Debian's postgresql-15 package)",
    )
    port: int = setting(0, "TCP port on 127.0.0.1; 0 picks a free one at each start")
    server_user: str = setting(
        "postgres", "the OS user initdb and the server run as when the caller is root"
    )
    superuser: str = setting(
        "postgres", "the cluster's superuser role, for admin work over the unix socket only"
    )
    ready_timeout_seconds: float = setting(
        30.0, "how long a start may take to accept connections (crash recovery included)"
    )
    tls_dir: pathlib.Path | None = None
    """The server's certificate directory (`shopmesh ca issue postgres`): TLS only, every
    login with a client certificate from the same CA whose name is the role's, as well
    as its password. None: plaintext on loopback."""


@dataclass(frozen=True)
class ServiceDatabase:
    """How a service reaches its PostgreSQL database: what its `--db-url` and
    `--db-password-file` take."""

    url: str
    """postgresql://role@host:port/db, with no password in it (a command line is public)."""
    password_file: pathlib.Path
    """The role's password, in a file only its owner may read."""


class PostgresProcess(Process):
    """The postmaster, stopped with PostgreSQL's fast shutdown."""

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        # SIGINT is the fast shutdown: open transactions roll back, clients are
        # disconnected, a checkpoint is written. SIGTERM, which Process.stop sends next
        # (and then SIGKILL), alone is the smart shutdown, which waits for every client to
        # hang up on its own: one idle pooled connection would hold it until the SIGKILL.
        # A smart request after a fast one changes nothing.
        self.signal(signal.SIGINT)
        return super().stop(timeout)


class Cluster:
    """The cluster in `<workdir>/postgres`: `start` creates it if need be and runs the
    server; `ensure_database` gives a service its role and database; `stop` stops it."""

    def __init__(self, workdir: pathlib.Path, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.root = workdir.resolve() / "postgres"
        self.data = self.root / "data"
        self.run_dir = self.root / "run"
        self.secrets = self.root / "secrets"
        self.log_path = self.root / "postgres.log"
        self.port = 0
        """The TCP port of the running server (0 before `start`)."""
        self.initdb_seconds: float | None = None
        """How long initdb took at the last start; None if the cluster existed."""
        self.ready_seconds = 0.0
        """From starting the server to its first accepted connection, at the last start."""
        self._process: PostgresProcess | None = None
        self._owner: tuple[int, int] | None = None
        """(uid, gid) initdb and the server run as, if not the caller's (set by `start`)."""

    @property
    def process(self) -> PostgresProcess:
        """The server of the last `start`."""
        if self._process is None:
            raise RuntimeError("the cluster was never started")
        return self._process

    def password_file(self, role: str) -> pathlib.Path:
        return self.secrets / f"{role}.password"

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def start(self) -> Cluster:
        """Creates the cluster if there is none, starts the server on a free port (or the
        set one) and returns once it accepts connections; StartError (the server stopped
        again) if it does not, MissingTool if PostgreSQL 15 is not installed."""
        postgres = self.settings.bin_dir / "postgres"
        if not postgres.exists():
            raise MissingTool(
                f"PostgreSQL 15 is not installed ({postgres} is missing): `make postgresql`"
                " installs Debian's package (as root; otherwise apt-get install postgresql-15)"
            )
        # initdb and the server refuse root; as root they run as the server user.
        self._owner = _user(self.settings.server_user) if os.geteuid() == 0 else None
        self._prepare_directories()
        superuser_password = self._password(self.settings.superuser)
        self.initdb_seconds = None
        if not self.initialised():
            began = time.monotonic()
            self._initdb(superuser_password)
            self.initdb_seconds = time.monotonic() - began
        self._write_hba()
        tls_flags = self._install_certificate()
        self.port = self.settings.port or free_ports(1)[0]
        process = PostgresProcess(
            "postgres",
            self.log_path,
            [
                *self._as_server_user(),
                str(postgres),
                *("-D", str(self.data)),
                *("-c", f"port={self.port}"),
                *("-c", f"listen_addresses={HOST}"),
                *("-c", f"unix_socket_directories={self.run_dir}"),
                *("-c", f"password_encryption={SCRAM}"),
                *tls_flags,
            ],
            ready=self._accepts,
        )
        self._process = process
        began = time.monotonic()
        process.start()
        try:
            process.wait_until(
                process.is_ready, "accepting connections", self.settings.ready_timeout_seconds
            )
            self.ready_seconds = time.monotonic() - began
            self._close_system_databases()
        except BaseException:
            process.stop()
            raise
        return self

    def stop(self) -> int | None:
        """Stops the server by its PID (fast shutdown); its exit code."""
        return self._process.stop() if self._process is not None else None

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[TupleRow]:
        """A connection as the superuser over the unix socket, in autocommit (CREATE
        DATABASE runs in no transaction)."""
        return psycopg.connect(
            host=str(self.run_dir),
            port=self.port,
            user=self.settings.superuser,
            password=self._password(self.settings.superuser),
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def ensure_database(self, name: str) -> str:
        """Gives `name` (a service) a role and a database of that name, the role its
        password from `password_file(name)` (generated the first time) and the database
        to itself alone; returns the service's DSN. Idempotent."""
        if not NAME.fullmatch(name) or name in (self.settings.superuser, "template0", "template1"):
            raise ValueError(f"{name!r} cannot name a service's role and database")
        password = self._password(name)
        with self.admin() as conn:
            verifier = conn.pgconn.encrypt_password(
                password.encode(), name.encode(), SCRAM.encode()
            )
            role = sql.Identifier(name)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone()
            conn.execute(
                sql.SQL(
                    "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                    " NOBYPASSRLS PASSWORD {}"
                ).format(
                    sql.SQL("ALTER" if exists else "CREATE"), role, sql.Literal(verifier.decode())
                )
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
            # PUBLIC (every role) may CONNECT to a new database and create TEMPORARY
            # tables in it; only the owner may now.
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(role))
        with self.admin(name) as conn:
            # PostgreSQL 15 leaves PUBLIC the USAGE of schema public (its owner is
            # pg_database_owner: the service's role) and EXECUTE of new functions and
            # USAGE of new types: none of it for anyone but the owner.
            conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
            for kind in ("FUNCTIONS", "TYPES"):
                conn.execute(
                    sql.SQL(
                        "ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE ALL ON {} FROM PUBLIC"
                    ).format(role, sql.SQL(kind))
                )
        return self.dsn(name)

    def ensure_databases(self, names: tuple[str, ...] = SERVICES) -> dict[str, str]:
        """`ensure_database` for each of `names`: the DSN of each."""
        return {name: self.ensure_database(name) for name in names}

    def service_database(self, name: str) -> ServiceDatabase:
        """`ensure_database(name)`, and how a service reaches it (`database_of`)."""
        self.ensure_database(name)
        return self.database_of(name)

    def database_of(self, name: str) -> ServiceDatabase:
        """How a service reaches its database on the server: the URL without the
        password, and the password's file."""
        return ServiceDatabase(
            f"postgresql://{name}@{HOST}:{self.port}/{name}", self.password_file(name)
        )

    def running_port(self) -> int | None:
        """The port of a server running on this cluster now (started by another process,
        e.g. `shopmesh run --postgres`), from its postmaster.pid; None if none runs."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
            os.kill(int(lines[0]), 0)
            return int(lines[3])  # the file's 4th line is the port
        except (OSError, ValueError, IndexError):
            return None

    def dsn(self, name: str) -> str:
        """`postgresql://role:password@127.0.0.1:port/db` of a service, password read from
        its file."""
        password = urllib.parse.quote(self._password(name, create=False), safe="")
        return f"postgresql://{name}:{password}@{HOST}:{self.port}/{name}"

    # Creating the cluster.

    def _prepare_directories(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the server user passes through it to data/ and run/
        self.secrets.mkdir(exist_ok=True)
        self.secrets.chmod(0o700)
        for own in (self.data, self.run_dir):
            own.mkdir(exist_ok=True)
            own.chmod(0o700)
            if self._owner is not None:
                os.chown(own, *self._owner)
        if self._owner is not None:
            blocked = _untraversable(self.root, *self._owner)
            if blocked is not None:
                raise StartError(
                    f"the {self.settings.server_user} user, which the server runs as, cannot"
                    f" reach {self.root}: {blocked} (mode {stat.S_IMODE(blocked.stat().st_mode):o})"
                    " is closed to it; use a workdir it can reach"
                )

    def _initdb(self, superuser_password: str) -> None:
        # initdb reads the superuser's password from a file, as the server user: a copy
        # in run/ (the server user's alone), gone once initdb is done.
        pwfile = self.run_dir / "initdb.pwfile"
        pwfile.unlink(missing_ok=True)
        _write_secret(pwfile, superuser_password)
        if self._owner is not None:
            os.chown(pwfile, *self._owner)
        command = [
            *self._as_server_user(),
            str(self.settings.bin_dir / "initdb"),
            *("--pgdata", str(self.data)),
            *("--username", self.settings.superuser),
            *("--pwfile", str(pwfile)),
            *("--auth", SCRAM),
            # UTF8 and C: the same on every host, and text sorts by byte, as in SQLite.
            *("--encoding", "UTF8", "--locale", "C"),
        ]
        try:
            with self.log_path.open("ab") as log_file:
                done = subprocess.run(
                    command,
                    cwd=self.root,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise StartError(f"initdb exited with code {done.returncode}; its log ends:\n{tail}")

    def _write_hba(self) -> None:
        """pg_hba.conf is shopmesh's, rewritten at each start: SCRAM or nothing."""
        superuser = self.settings.superuser
        rules = [
            "# Written by shopmesh (shopmesh/postgres.py) at each start; edits are lost.",
            "# Every connection authenticates with SCRAM-SHA-256; a role reaches only the",
            "# database of its own name (sameuser), the superuser only over the unix socket.",
            "# TYPE  DATABASE  USER  ADDRESS  METHOD",
            f"local  all  {superuser}  {SCRAM}",
            f"host  all  {superuser}  {HOST}/32  reject",
            f"local  sameuser  all  {SCRAM}",
            f"host  sameuser  all  {HOST}/32  {SCRAM}",
        ]
        if self.settings.tls_dir is not None:
            # TLS only (no `host` line matches a plaintext login), and the certificate's
            # name must be the role's (verify-full compares its CN with the user).
            rules[-1] = f"hostssl  sameuser  all  {HOST}/32  {SCRAM}  clientcert=verify-full"
        hba = self.data / "pg_hba.conf"
        hba.write_text("\n".join(rules) + "\n")
        hba.chmod(0o600)
        if self._owner is not None:
            os.chown(hba, *self._owner)

    def _install_certificate(self) -> list[str]:
        """Copies the server's certificate into the data directory, owned by the server
        user (it refuses a key another user owns), and the flags that serve it."""
        if self.settings.tls_dir is None:
            return []
        copies = {"server.crt": "cert.pem", "server.key": "key.pem", "root.crt": "ca.pem"}
        for copy, original in copies.items():
            # Staged and renamed: a reload never reads half a file.
            staged = self.data / f"{copy}.tmp"
            staged.unlink(missing_ok=True)
            _write_secret(staged, (self.settings.tls_dir / original).read_text().rstrip("\n"))
            if self._owner is not None:
                os.chown(staged, *self._owner)
            staged.replace(self.data / copy)
        return [
            *("-c", "ssl=on"),
            *("-c", "ssl_cert_file=server.crt"),
            *("-c", "ssl_key_file=server.key"),
            *("-c", "ssl_ca_file=root.crt"),
        ]

    def reload_certificate(self) -> None:
        """Serves the renewed certificate in `tls_dir`: copied again, then SIGHUP (the
        server re-reads its TLS files on a reload; open connections keep theirs)."""
        self._install_certificate()
        self.process.signal(signal.SIGHUP)

    def _close_system_databases(self) -> None:
        # Like a new one, `postgres` and `template1` let PUBLIC connect and make temporary
        # tables; pg_hba already keeps the services' roles out of them.
        with self.admin() as conn:
            conn.execute("REVOKE ALL ON DATABASE postgres, template1 FROM PUBLIC")

    # Running.

    def _accepts(self) -> bool:
        """Whether the server takes a real login now (not starting up, not recovering)."""
        try:
            with self.admin():
                return True
        except psycopg.OperationalError:
            return False

    def _as_server_user(self) -> list[str]:
        if self._owner is None:
            return []
        uid, gid = self._owner
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"]

    def _password(self, role: str, *, create: bool = True) -> str:
        """The password in `role`'s file, written first (random) if there is none."""
        path = self.password_file(role)
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"{path}: no password for {role!r} (ensure_database)")
            if role == self.settings.superuser and self.initialised():
                raise StartError(
                    f"the cluster in {self.data} has no superuser password file {path}:"
                    f" restore it, or delete {self.root} to start a new cluster"
                )
            _write_secret(path, secrets.token_urlsafe(32))
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise StartError(f"{path} is open to others (mode {mode:o}): chmod 600 it")
        return path.read_text().strip()


def tls_url(url: str, client_tls_dir: pathlib.Path) -> str:
    """`url` on TLS only, checking the server's certificate (and that it names the host)
    and presenting the client's from `client_tls_dir` (libpq's and asyncpg's names)."""
    query = urllib.parse.urlencode(
        {
            "sslmode": "verify-full",
            "sslrootcert": client_tls_dir / "ca.pem",
            "sslcert": client_tls_dir / "cert.pem",
            "sslkey": client_tls_dir / "key.pem",
        }
    )
    return f"{url}?{query}"


def _write_secret(path: pathlib.Path, text: str) -> None:
    """Creates `path` with mode 0600 from the start (no window with a looser mode)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text + "\n")


def _user(name: str) -> tuple[int, int]:
    """(uid, gid) of OS user `name`."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise MissingTool(
            f"there is no {name!r} OS user for PostgreSQL to run as (initdb refuses root):"
            " `make postgresql` installs Debian's package, which creates it"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _untraversable(path: pathlib.Path, uid: int, gid: int) -> pathlib.Path | None:
    """The first directory from `path` up that user `uid` may not pass through, if any."""
    groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    for directory in (path, *path.parents):
        info = directory.stat()
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None
