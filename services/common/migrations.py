"""Each service's schema as versioned migrations, applied by yoyo-migrations: every store
applies the pending ones when it opens its database, and `shopmesh migrate` does it by hand.

A service's migrations are the SQL files in services/<service>/migrations, applied in the
order of their names (0001_initial.sql, 0002_...), each in a transaction of its own. yoyo
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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from yoyo import default_migration_table, read_migrations
from yoyo.backends import SQLiteBackend
from yoyo.connections import parse_uri
from yoyo.exceptions import LockTimeout

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


def folder(service: str) -> pathlib.Path:
    """Where the service's migrations are."""
    return SERVICES_FOLDER / service / "migrations"


def services() -> list[str]:
    """The services that have migrations."""
    return sorted(p.parent.name for p in SERVICES_FOLDER.glob("*/migrations") if p.is_dir())


def apply(path: pathlib.Path, service: str) -> list[str]:
    """Applies the service's pending migrations to the database at `path` (which exists, in
    WAL mode: see db.connect); returns the ids it applied, none if another process did."""
    known = read_migrations(str(folder(service)))
    try:
        with _backend(path) as backend:
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


def status(path: pathlib.Path, service: str) -> list[Migration]:
    """Each of the service's migrations, in order, and whether the database has it."""
    with _backend(path) as backend:
        known = read_migrations(str(folder(service)))
        applied = set(backend.get_applied_migration_hashes())
        return [Migration(m.id, m.hash in applied) for m in known]


def break_lock(path: pathlib.Path) -> None:
    """Removes the migration lock, e.g. one left by a process killed while migrating."""
    with _backend(path) as backend:
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


@contextlib.contextmanager
def _backend(path: pathlib.Path) -> Iterator[Any]:
    # What yoyo.get_backend does, with the backend above; the URL's path is absolute.
    backend = _SQLiteBackend(parse_uri(f"sqlite:///{path.resolve()}"), default_migration_table)
    try:
        backend.init_database()
        yield backend
    finally:
        backend.connection.close()
