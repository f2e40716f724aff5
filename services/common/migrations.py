"""Each service's schema as versioned migrations, applied by yoyo-migrations: every store
applies the pending ones when it opens its database, and `shopmesh migrate` does it by hand.

A service's migrations are the SQL files in services/<service>/migrations/<backend>
(sqlite/ or postgresql/: the same versions, each in its dialect), applied in the order of
their names (0001_initial.sql, 0002_...), each in a transaction of its own. yoyo
records them in tables of its own in the same database (_yoyo_migration, _yoyo_log,
_yoyo_version, yoyo_lock), so a database knows which it has.

Instances starting together on one database: yoyo's lock is a row in yoyo_lock, which
only one process can insert (its primary key); the others retry (LOCK_RETRY_SECONDS) until
it is deleted. The first instance to find migrations pending takes the lock, applies them and
lets go; the others then find nothing pending. The lock is a row, not a connection's: a
process killed while holding it leaves it behind, and the next start that finds something
pending waits LOCK_TIMEOUT_SECONDS and fails naming `shopmesh migrate --break-lock`. So the
lock is taken only when something is pending: starting on a migrated database never
takes it.

yoyo applies a migration on a connection of its own and records it afterwards, in another
transaction: a process killed between the two applies it again at its next start. Every
migration is therefore idempotent (CREATE ... IF NOT EXISTS, an INSERT that skips what is
there), which is also how 0001_initial adopts a database made before migrations existed:
its tables are there, and only what that code's older versions lacked is created.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from yoyo import default_migration_table, read_migrations
from yoyo.backends import PostgresqlPsycopgBackend, SQLiteBackend
from yoyo.connections import parse_uri
from yoyo.exceptions import LockTimeout

from services.common.database import is_server_url

log = logging.getLogger(__name__)

SERVICES_FOLDER = pathlib.Path(__file__).resolve().parent.parent
LOCK_TIMEOUT_SECONDS = 30.0
"""How long a start waits for another process's migrations: far more than any of ours takes
(milliseconds), and a bound on how long a lock left by a killed process stalls a start."""
LOCK_RETRY_SECONDS = 0.02
"""How often a process waiting for the lock tries again. yoyo's own 0.5 s made instances
starting together on a new file wait that long for migrations that take milliseconds
(tests/service/test_db.py, 40 groups of 6: 2.0 s before migrations, 19.8 s with 0.5 s,
5.5 s with this)."""


class MigrationError(Exception):
    """The database could not be migrated (locked for too long); the message says what to do."""


@dataclass(frozen=True)
class Migration:
    """One of a service's migrations, and whether the database has it."""

    id: str
    applied: bool


BACKENDS = ("sqlite", "postgresql")

Location = pathlib.Path | str
"""A SQLite file's path, or a PostgreSQL URL (postgresql://role@host:port/db)."""


def folder(service: str, backend: str = "sqlite") -> pathlib.Path:
    """Where the service's migrations for `backend` are."""
    return SERVICES_FOLDER / service / "migrations" / backend


def services() -> list[str]:
    """The services that have migrations."""
    return sorted(p.parent.name for p in SERVICES_FOLDER.glob("*/migrations") if p.is_dir())


def apply(path: Location, service: str, *, password: str | None = None) -> list[str]:
    """Applies the service's pending migrations to the database at `path` (a SQLite file
    that exists, in WAL mode: see db.connect; or a PostgreSQL URL, logged in with
    `password` if given); returns the ids it applied, none if another process did."""
    known = read_migrations(str(folder(service, _kind(path))))
    try:
        with _backend(path, password) as backend:
            # On a new database this creates yoyo's own tables, under its lock.
            if not backend.to_apply(known):
                return []
            with backend.lock(LOCK_TIMEOUT_SECONDS):
                pending = backend.to_apply(known)  # another process may have applied them
                backend.apply_migrations(pending)
    except LockTimeout as exc:
        raise MigrationError(
            f"{path}: {exc}; if no process is migrating it, remove the lock with"
            f" `shopmesh migrate --service {service} --db {path} --break-lock`"
        ) from exc
    applied = [m.id for m in pending]
    if applied:
        log.info("migrated %s: applied %s", path, ", ".join(applied))
    return applied


def status(path: Location, service: str, *, password: str | None = None) -> list[Migration]:
    """Each of the service's migrations, in order, and whether the database has it."""
    with _backend(path, password) as backend:
        known = read_migrations(str(folder(service, _kind(path))))
        applied = set(backend.get_applied_migration_hashes())
        return [Migration(m.id, m.hash in applied) for m in known]


def break_lock(path: Location, *, password: str | None = None) -> None:
    """Removes the migration lock, e.g. one left by a process killed while migrating."""
    with _backend(path, password) as backend:
        backend.break_lock()


class _SQLiteBackend(SQLiteBackend):
    """yoyo's SQLite backend, retrying the lock every LOCK_RETRY_SECONDS, and with every
    transaction taking the write lock up front (BEGIN IMMEDIATE), as services/common/db.py's
    do. yoyo's plain BEGIN defers it to the first write, and a transaction that has read and
    then needs to write fails at once ("database is locked", no busy timeout) if another
    process holds the write lock at that moment, or has committed since the read: a
    migration whose first statements only find their table there (CREATE ... IF NOT EXISTS)
    would fail so while other instances on the file write."""

    _in_transaction: bool  # yoyo's flag, which begin() keeps as its own does

    def begin(self) -> None:
        assert not self._in_transaction
        self._in_transaction = True
        self.execute("BEGIN IMMEDIATE")

    def _insert_lock_row(
        self, pid: int, timeout: float, poll_interval: float = LOCK_RETRY_SECONDS
    ) -> None:
        # yoyo's lock() names no interval, so its default (0.5 s) applied; see above.
        super()._insert_lock_row(pid, timeout, poll_interval)


class _PostgresqlBackend(PostgresqlPsycopgBackend):
    """yoyo's PostgreSQL backend (on psycopg 3), retrying the lock every
    LOCK_RETRY_SECONDS. Its transactions need nothing more: DDL is transactional on
    PostgreSQL, and a second process's CREATE waits on the first's locks."""

    def _insert_lock_row(
        self, pid: int, timeout: float, poll_interval: float = LOCK_RETRY_SECONDS
    ) -> None:
        super()._insert_lock_row(pid, timeout, poll_interval)


def _kind(path: Location) -> str:
    return "postgresql" if is_server_url(path) else "sqlite"


@contextlib.contextmanager
def _backend(path: Location, password: str | None = None) -> Iterator[Any]:
    # What yoyo.get_backend does, with the backends above.
    if is_server_url(path):
        uri = parse_uri(re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", str(path)))
        if password is not None:
            uri = uri._replace(password=password)
        backend: Any = _PostgresqlBackend(uri, default_migration_table)
    else:  # the URL's path is absolute
        uri = parse_uri(f"sqlite:///{pathlib.Path(path).resolve()}")
        backend = _SQLiteBackend(uri, default_migration_table)
    try:
        backend.init_database()
        yield backend
    finally:
        backend.connection.close()
