"""How each measured system makes a commit durable, read from the running system where it
can be, for `make bench`'s report: a figure of orders/s means little without it.

- SQLite: the journal mode is the file's own (WAL persists in the file: read it there);
  `synchronous` is a setting of each connection, not of the file, so what is reported is
  the services' `db_synchronous` as the bench runs them (it sets no other).
- PostgreSQL: the server's own settings, by SHOW over the superuser's socket.
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
from collections.abc import Callable
from typing import Any

import psycopg

from services.common import db
from services.common.config import StoreConfig

POSTGRES_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
"""What decides whether a committed transaction survives a crash or a power loss."""

REQUIRED_POSTGRES = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
"""What the bench requires of the server: every COMMIT flushed to disk before it is
answered, pages whole after a crash."""


def sqlite(path: pathlib.Path) -> dict[str, str]:
    """The SQLite store at `path`: its journal mode, read from the file, and `synchronous`."""
    uri = f"file:{path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        journal: str = conn.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = StoreConfig.__dataclass_fields__["db_synchronous"].default
    assert synchronous == db.SYNCHRONOUS
    return {"journal_mode": journal, "synchronous": str(synchronous)}


def postgres(admin: Callable[[], psycopg.Connection[Any]]) -> dict[str, str]:
    """The running server's settings of POSTGRES_SETTINGS; SystemExit if one is not as
    REQUIRED_POSTGRES (a faster but less durable server is no comparison)."""
    with admin() as conn:
        found = {}
        for name in POSTGRES_SETTINGS:
            row = conn.execute(f"SHOW {name}").fetchone()
            found[name] = str(row[0]) if row else ""
    wrong = {k: v for k, v in REQUIRED_POSTGRES.items() if found[k] != v}
    if wrong:
        raise SystemExit(f"PostgreSQL is not durable as the bench requires: {found}")
    return found


def shown(settings: dict[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in settings.items())
