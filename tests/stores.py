"""A test's stores on the session's backend (--backend): `open_store(OrderStore)` opens a
SQLite file in the test's own directory, or the service's database on the session's
PostgreSQL server. Opening one service twice in a test gives two stores on one database,
as two instances of the service have; every store is closed after the test.

On PostgreSQL each service has one database for the whole session (`tests_<service>`),
emptied when a test first opens it: its tables truncated (yoyo's kept, so the migrations
are not applied again, and MIGRATION_RECORDS), RESTART IDENTITY resetting their
sequences, so a test sees what a new database would show. Measured here (20 tests' worth
per service): opening a store and emptying its database took 24-41 ms a test (the
TRUNCATE 9 ms of it), a database of its own per test (CREATE DATABASE, its role, the
migrations) 130-146 ms.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar, cast

from services.common import db
from services.common.database import Database, Row, Tx
from shopmesh.postgres import Cluster

S = TypeVar("S", bound=db.Store)
T = TypeVar("T")

CLOSE_TIMEOUT_SECONDS = 10.0
"""How long closing a test's store may take: closing a pool waits for its connections."""
DATABASE_PREFIX = "tests_"
"""The session server's databases for the stores of tests: named apart from the services'
own (`order`, ...), which the process stacks of the same session may use."""


MIGRATION_RECORDS = ("order_log_start",)
"""Tables a migration fills once, as yoyo's own records: kept, as they are in a new
database (order's log starts at the first order: the session's database was migrated
empty), so that applying the migration again finds its row there, as it would."""


class SessionDatabases:
    """The session server's database of each service, made on first use, and their tables."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._urls: dict[str, str] = {}
        self._tables: dict[str, str] = {}

    def url(self, service: str) -> str:
        """The service's database (with the password in the URL), made the first time."""
        if service not in self._urls:
            self._urls[service] = self.cluster.ensure_database(DATABASE_PREFIX + service)
        return self._urls[service]

    async def empty(self, store: db.Store) -> None:
        """Truncates every table of the store's service but yoyo's (and MIGRATION_RECORDS),
        sequences restarted."""
        service = store.service
        if service not in self._tables:
            found = await store.db.read(
                lambda tx: tx.fetchall(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                    " AND tablename NOT LIKE '%yoyo%' AND tablename NOT IN ({})"
                    " ORDER BY tablename".format(", ".join(f"'{t}'" for t in MIGRATION_RECORDS))
                )
            )
            self._tables[service] = ", ".join(f'"{row[0]}"' for row in found)
        tables = self._tables[service]

        async def truncate(tx: Tx) -> None:
            await tx.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")

        if tables:
            await store.db.write(truncate)


class StoreOpener:
    """`await open_store(XStore)` opens a store of XStore's service on the test's backend;
    `close()` closes every store it opened."""

    def __init__(
        self, backend: str, directory: pathlib.Path, databases: SessionDatabases | None
    ) -> None:
        self.backend = backend
        self.directory = directory
        self._databases = databases
        self._opened: list[db.Store] = []
        self._emptied: set[str] = set()

    def location(self, service: str) -> pathlib.Path | str:
        """Where the service's stores of this test are: a file, or a postgresql:// URL."""
        if self._databases is None:
            return self.directory / f"{service}.db"
        return self._databases.url(service)

    async def __call__(self, store_class: type[S]) -> S:
        service = store_class.service
        if not service:
            raise ValueError(f"{store_class.__name__} names no service, whose tables it needs")
        location = self.location(service)
        if isinstance(location, pathlib.Path):
            store = store_class(location)
        else:
            store = await store_class.open(location)
        self._opened.append(store)
        if self._databases is not None and service not in self._emptied:
            await self._databases.empty(store)
            self._emptied.add(service)
        return store

    async def close(self) -> None:
        """Closes every store; one that cannot close in time (a pool waits for each of its
        connections to come back: a task the test left running still holds one) fails the
        test, after the others are closed."""
        stuck = []
        while self._opened:
            store = self._opened.pop()
            try:
                await asyncio.wait_for(store.aclose(), CLOSE_TIMEOUT_SECONDS)
            except TimeoutError:
                stuck.append(type(store).__name__)
        if stuck:
            raise AssertionError(
                f"{', '.join(stuck)} did not close within {CLOSE_TIMEOUT_SECONDS:g} s:"
                " a transaction of the test's was still running (a task left behind?)"
            )


async def rows(
    store: db.Store, sql: str, params: Sequence[object] = ()
) -> list[tuple[object, ...]]:
    """The rows of a query, read through the store's own database (either backend), as
    another instance would see them: committed data only."""
    found = await store.db.read(lambda tx: tx.fetchall(sql, params))
    # Both backends' rows iterate over their values (sqlite3.Row, asyncpg's Record).
    return [tuple(cast(Iterable[object], row)) for row in found]


Statement = tuple[str, tuple[object, ...]]
OnStatement = Callable[[str, tuple[object, ...]], Awaitable[None]]


def record_statements(store: db.Store) -> list[Statement]:
    """Every statement the store runs from now on, with its parameters, in order: seen at
    the store interface, so alike on either backend."""
    statements: list[Statement] = []

    async def record(sql: str, params: tuple[object, ...]) -> None:
        statements.append((sql, params))

    before_each_statement(store, record)
    return statements


def before_each_statement(store: db.Store, hook: OnStatement) -> None:
    """Has the store await `hook(sql, params)` before each statement it runs from now on,
    inside the statement's transaction. On SQLite a hook must not suspend (a store's
    transaction runs to its end on the thread it is on: db.run_to_end)."""
    store.db = _Observed(store.db, hook)


async def query_plan(store: db.Store, backend: str, sql: str, params: Sequence[object]) -> str:
    """The plan of a query, as one string. On SQLite the plan the planner picks. On
    PostgreSQL with sequential scans priced out: its planner scans a table of a few rows
    whatever indexes it has, so what a test can see there is which index the query can
    use (none shows as a Seq Scan all the same). Not itself recorded or observed."""
    database = store.db._inner if isinstance(store.db, _Observed) else store.db
    if backend == "sqlite":
        found = await database.read(lambda tx: tx.fetchall(f"EXPLAIN QUERY PLAN {sql}", params))
        return " | ".join(str(row[-1]) for row in found)

    async def explain(tx: Tx) -> list[object]:
        await tx.execute("SET LOCAL enable_seqscan = off")  # this transaction only
        return [row[0] for row in await tx.fetchall(f"EXPLAIN {sql}", params)]

    return " | ".join(str(line) for line in await database.write(explain))


class _Observed:
    """A `Database` whose transactions call a hook before each statement."""

    def __init__(self, inner: Database, hook: OnStatement) -> None:
        self._inner = inner
        self._hook = hook

    async def read(self, fn: Callable[[Tx], Awaitable[T]], *, snapshot: bool = False) -> T:
        return await self._inner.read(lambda tx: fn(_ObservedTx(tx, self._hook)), snapshot=snapshot)

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        return await self._inner.write(lambda tx: fn(_ObservedTx(tx, self._hook)))

    async def close(self) -> None:
        await self._inner.close()


class _ObservedTx:
    def __init__(self, inner: Tx, hook: OnStatement) -> None:
        self._inner = inner
        self._hook = hook
        self.for_share = inner.for_share
        self.skip_locked = inner.skip_locked

    async def lock(self, key: str) -> None:
        await self._inner.lock(key)

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        await self._hook(sql, tuple(params))
        return await self._inner.execute(sql, params)

    async def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        every = [tuple(each) for each in params]
        for each in every:
            await self._hook(sql, each)
        await self._inner.executemany(sql, every)

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        await self._hook(sql, tuple(params))
        return await self._inner.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        await self._hook(sql, tuple(params))
        return await self._inner.fetchall(sql, params)

    async def now(self) -> float:
        return await self._inner.now()
