"""SQLite, set up the same way for every service: WAL, a busy timeout, explicit transactions.

Calls run on the event loop's thread: each is short, one connection per process keeps
write transactions in order, and BEGIN IMMEDIATE takes the write lock up front so that
several processes sharing a file never deadlock on a lock upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import sqlite3
from collections.abc import Iterator

from services.common.errors import ErrorKind, ServiceError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000


def connect(path: pathlib.Path, synchronous: str, schema: str) -> sqlite3.Connection:
    """Opens (creating if needed) the database at `path` and applies `schema`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(schema)
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: all of it commits or none of it does.

    A storage fault (disk full, database locked too long) becomes UNAVAILABLE with the
    reason STORAGE_UNAVAILABLE: the caller may retry, and nothing was half applied.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise _storage_error(exc) from exc
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError):
            raise _storage_error(exc) from exc
        raise


def _storage_error(exc: sqlite3.OperationalError) -> ServiceError:
    log.error("storage fault: %s", exc)
    return ServiceError(ErrorKind.UNAVAILABLE, "STORAGE_UNAVAILABLE", "storage is unavailable")
