"""The store interface every storage backend implements: a `Database` runs a store's reads
and writes, each an async function of one transaction (a `Tx`).

A store writes its logic once, as `async def` functions of a `Tx` handed to
`Database.read` or `Database.write`; how a backend runs them (SQLite: reads on their own
connection, writes batched under one COMMIT on a writer thread, services.common.db) is
its own business, so the same store code can run on a server database's driver too.

The SQL is written in SQLite's placeholder style (`?`, `?N`), one statement per string, so
that another backend can translate the placeholders mechanically; statements the dialects
spell alike (`ON CONFLICT ... DO NOTHING`, `RETURNING`) serve both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Row(Protocol):
    """A result row, read by column name (or position)."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Tx(Protocol):
    """One transaction (or, for a plain read, one connection's statements)."""

    for_share: str
    """Appended to a SELECT whose rows must not change until this transaction ends (a
    fence): " FOR SHARE" on a server database, "" on SQLite (its writes take the whole
    database's write lock)."""
    skip_locked: str
    """Appended to a sweeper's SELECT of rows it will change: " FOR UPDATE SKIP LOCKED" on
    a server database (rows another transaction is busy with are left to the next sweep),
    "" on SQLite."""

    async def lock(self, key: str) -> None:
        """Serializes this transaction with every other that locks `key`, until it ends
        (a PostgreSQL advisory lock; nothing on SQLite, whose writes are serialized)."""
        ...

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Runs one statement; returns how many rows it changed."""
        ...

    async def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        """Runs one statement once for each set of parameters."""
        ...

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        """The first row of a query, or None if it has none."""
        ...

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Every row of a query."""
        ...

    async def now(self) -> float:
        """The time rows are compared by, in seconds since the epoch: one clock for every
        instance that shares the database (the host's on SQLite, whose instances share one
        host; a server database's own)."""
        ...


class Database(Protocol):
    """Runs a store's transactions."""

    async def close(self) -> None:
        """Lets the database go, once nothing runs on it any more."""
        ...

    async def read(self, fn: Callable[[Tx], Awaitable[T]], *, snapshot: bool = False) -> T:
        """Runs `fn` on committed data and returns its result. With `snapshot`, every
        statement of `fn` sees the database at one moment (a read of several statements
        that a commit must not split); without it, `fn` should make one statement."""
        ...

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Runs `fn` as one write transaction, committed (durably) before this returns:
        all of it or, if it raises, none of it. A storage fault raises UNAVAILABLE with
        the reason STORAGE_UNAVAILABLE (the caller may retry; nothing was half applied)."""
        ...


def is_server_url(location: object) -> bool:
    """Whether a store's location names a server database (postgresql://...), not a file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


async def clock(tx: Tx, now: float | None) -> float:
    """The time a store method works at: `now` if its caller set one (tests do), else the
    database's (`Tx.now`)."""
    return await tx.now() if now is None else now
