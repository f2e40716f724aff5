"""The store interface (services.common.database) on PostgreSQL, through an asyncpg pool.

Being written: `connect` is the entry point `Store.open` calls for a postgresql:// URL.
"""

from __future__ import annotations

import pathlib

from services.common.database import Database


async def connect(url: str, service: str, *, password_file: pathlib.Path | None = None) -> Database:
    """A pool on the service's database at `url`, its migrations applied."""
    raise NotImplementedError("the PostgreSQL backend is being written")
