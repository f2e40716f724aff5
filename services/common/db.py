"""SQLite, set up the same way for every service: WAL, a busy timeout, explicit transactions,
and group commit; and `SqliteDatabase`, the store interface (services.common.database)
over it.

Each store has two connections: reads run on the event loop's thread (each is short) and
see only committed data; writes go through one connection, in order, and BEGIN IMMEDIATE
takes the write lock up front so that several processes sharing a file never deadlock on
a lock upgrade. A store's transactions are async functions, written once for every
backend; on SQLite they never suspend, and `run_to_end` runs each on the thread it is on.

Group commit: with synchronous=FULL every COMMIT is an fsync, and under load the fsyncs,
not the Python, were what the services waited on (bench/profile.py: 45-65% of each
service's samples inside COMMIT, with the event loop blocked meanwhile). `GroupCommit`
runs the writes queued meanwhile as savepoints of one transaction with one COMMIT on a
writer thread, and answers each caller only after that COMMIT: the same durability, a
fraction of the fsyncs, and the event loop free while the disk works. SQLite has no group
commit of its own and no maintained library adds one (aiosqlite runs each call in a
thread and commits each), hence this class.

No write, however alone, runs on the event loop: its BEGIN IMMEDIATE may wait up to the
busy timeout for another process's lock on the same file, and a loop stopped that long
answers no RPC and no health check, so every instance on the file would look dead at once.
Opening a store (applying its pending migrations, services/common/migrations.py) does
write on the caller's thread: it runs before the service serves anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pathlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Self, TypeVar

from services.common import migrations, outbox, postgresql
from services.common.database import Database, Row, Tx, is_server_url
from services.common.errors import ErrorKind, ServiceError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
SYNCHRONOUS = "FULL"
"""Every commit survives power loss, unless a store is opened otherwise."""
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")


def connect(path: pathlib.Path, synchronous: str) -> sqlite3.Connection:
    """Opens (creating if needed) the database at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    _use_wal(conn)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switches the file to WAL (kept in the file once done). Switching a new file needs it
    to itself, and SQLite then answers "database is locked" at once instead of waiting, so
    instances that start together on one new file retry briefly until one has switched it.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        with contextlib.suppress(sqlite3.OperationalError):
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("could not switch the database to WAL: locked")
        time.sleep(0.01)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: all of it commits or none of it does.

    A storage fault (disk full, database locked too long) becomes UNAVAILABLE with the
    reason STORAGE_UNAVAILABLE: the caller may retry, and nothing was half applied.
    Inside a group commit's batch it is a savepoint: an error undoes this step alone.
    """
    if conn.in_transaction:
        with _savepoint(conn):
            yield conn
        return
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


@contextlib.contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction: every SELECT inside sees the database as of the first one.

    Without it each SELECT on the read connection is its own transaction, and a read made
    of two (an order's row, then its items) could straddle a commit that changed both.
    """
    try:
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")  # ends the read; it wrote nothing
    except sqlite3.OperationalError as exc:
        raise _storage_error(exc) from exc


@contextlib.contextmanager
def _savepoint(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("SAVEPOINT step")
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK TO step")
            conn.execute("RELEASE step")
        if isinstance(exc, sqlite3.OperationalError):
            raise _storage_error(exc) from exc
        raise
    conn.execute("RELEASE step")


T = TypeVar("T")


class GroupCommit:
    """Runs write transactions on `conn` in batches that share one COMMIT, on a thread of
    their own.

    `run(write)` queues a function that writes inside `transaction(conn)`. A writer thread
    takes everything queued, runs each write in its own savepoint, then one COMMIT makes
    them all durable before any caller hears its answer. While the thread waits for the
    disk, the event loop goes on serving and queueing the next batch, so the busier the
    service, the more writes share an fsync. A write that raises undoes only its own
    savepoint and its caller gets the error; if the batch cannot commit, every caller of it
    gets STORAGE_UNAVAILABLE (a write's answer may rest on another's uncommitted effect, so
    none is trusted).

    A batch of one write goes to the thread too: the hand-off costs about 25 µs (a lone
    write's p50 with synchronous=FULL went from about 170 to 195 µs), where waiting on the
    loop for another process's lock could cost the loop seconds (see above).
    Reads go through a connection of their own (see `Store`), which in WAL mode sees
    exactly what has been committed.

    With `enabled=False` each write is its own transaction, committed at once on the
    caller's thread, so on the event loop: the classic design the benchmark's baseline
    keeps (bench/baseline), lock waits and fsyncs included; shopmesh's services never
    turn it off.
    """

    def __init__(self, conn: sqlite3.Connection, enabled: bool = True) -> None:
        self._conn = conn
        self._enabled = enabled
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writes")
        self._queued: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._committing = False
        # Held only so the task is not garbage collected: the loop keeps tasks weakly.
        self._committer: asyncio.Task[None] | None = None

    async def run(self, write: Callable[[], T]) -> T:
        if not self._enabled:
            return write()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queued.append((write, future))
        if not self._committing:
            self._committing = True
            self._committer = loop.create_task(self._commit_queued())
        return await future

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    async def _commit_queued(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                writes = [write for write, _ in batch]
                try:
                    outcomes = await loop.run_in_executor(self._thread, self._commit, writes)
                except Exception as exc:  # e.g. the thread is shut down: no caller may hang
                    outcomes = [(None, exc) for _ in writes]
                for (_, future), (result, error) in zip(batch, outcomes, strict=True):
                    if future.cancelled():  # its caller left; the write stands
                        continue
                    if error is None:
                        future.set_result(result)
                    else:
                        future.set_exception(error)
        finally:
            self._committing = False

    def _commit(self, writes: list[Callable[[], Any]]) -> list[tuple[Any, Exception | None]]:
        """One transaction, a savepoint per write, one COMMIT, on the writer thread."""
        outcomes: list[tuple[Any, Exception | None]] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for write in writes:
                try:
                    outcomes.append((write(), None))
                except Exception as exc:  # the caller's own error, e.g. OUT_OF_STOCK
                    outcomes.append((None, exc))
                if not self._conn.in_transaction:
                    # SQLite rolled the whole batch back by itself (disk full, I/O error):
                    # stop here, before the next write would run outside the batch.
                    raise sqlite3.OperationalError("the batch's transaction was rolled back")
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            # As `transaction` does: a storage fault may be retried; anything else is a bug
            # (INTERNAL) and is not dressed up as one.
            failure = _storage_error(exc) if isinstance(exc, sqlite3.OperationalError) else exc
            return [(None, failure) for _ in writes]
        return outcomes


class SqliteTx:
    """A `Tx` over one SQLite connection. Its methods never suspend: each statement runs
    to its end when called, which is what lets `run_to_end` drive a store's coroutine on
    the writer thread."""

    for_share = ""  # a write holds the whole database's write lock already
    skip_locked = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def lock(self, key: str) -> None:
        pass  # writes are serialized: one writer thread, and BEGIN IMMEDIATE across processes

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    async def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        self._conn.executemany(sql, params)

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    async def now(self) -> float:
        # Every instance on one SQLite file runs on one host, so the host's clock is the
        # database's.
        return time.time()


def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine that never suspends (a store function awaiting only SqliteTx
    methods) to its end on this thread, and returns its result or raises its error.

    This is what lets a store's logic be written once as async code for every backend and
    still run inside SQLite's group commit, on the writer thread, between a savepoint and
    the batch's COMMIT. No library does this: asyncio.run and its kin start an event loop
    per call (and cannot run on a thread whose loop is running), and aiosqlite-style
    wrappers hop to a thread per statement and commit each transaction alone. A coroutine
    that does suspend (it awaited a sleep or a network call inside a transaction) would
    need a loop to resume it: that is a bug in the store, so it is closed and raises.
    """
    try:
        suspended_on = coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError(
        f"a store transaction awaited something that suspends ({suspended_on!r}); on SQLite"
        " a transaction may await only its Tx's methods"
    )


class SqliteDatabase:
    """The `Database` on SQLite: reads on the read connection, on the caller's thread (each
    is short, and in WAL mode sees only committed data); writes through `writes` (group
    commit: on the writer thread, each in its own savepoint of a shared transaction)."""

    def __init__(
        self, writer: sqlite3.Connection, reader: sqlite3.Connection, writes: GroupCommit
    ) -> None:
        self._writer = writer
        self._writes = writes
        self._write_tx = SqliteTx(writer)
        self._reader = reader
        self._read_tx = SqliteTx(reader)

    async def read(self, fn: Callable[[Tx], Awaitable[T]], *, snapshot: bool = False) -> T:
        if not snapshot:
            return run_to_end(_coroutine(fn(self._read_tx)))
        with read_snapshot(self._reader):
            return run_to_end(_coroutine(fn(self._read_tx)))

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        return await self._writes.run(functools.partial(self._write_now, fn))

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        self._writes.close()
        self._writer.close()
        self._reader.close()

    def _write_now(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """One write on the calling thread: a savepoint inside a group commit's batch, or
        a transaction of its own (`transaction`)."""
        with transaction(self._writer):
            return run_to_end(_coroutine(fn(self._write_tx)))


def _coroutine(awaitable: Awaitable[T]) -> Coroutine[Any, Any, T]:
    if not isinstance(awaitable, Coroutine):
        raise TypeError(f"a store transaction must be an async function, not {awaitable!r}")
    return awaitable


class Store:
    """A service's database, on SQLite or a server. Each store names its `service`, whose
    migrations make its tables, and writes its logic once, as async code against `self.db`
    (a `Database`), never a connection.

    `Store(path)` opens a SQLite file: writes through one connection and group commit,
    reads on a second connection (committed data only). `await Store.open(location)`
    opens either backend: a path, or a `postgresql://` URL (services.common.postgresql).
    """

    service: ClassVar[str] = ""
    """Opening the store applies services/<service>/migrations; "" applies none."""
    events_enabled: bool = True
    """Whether its writes append their events to the outbox (StoreConfig.events); off,
    `write_events` runs them with none (outbox.EventsOff)."""

    def __init__(
        self,
        path: pathlib.Path | Database,
        synchronous: str = SYNCHRONOUS,
        group_commit: bool = True,
    ) -> None:
        if not isinstance(path, pathlib.Path):  # a database opened already (`open`)
            self.db: Database = path
            return
        self._conn = connect(path, synchronous)  # first: the file is in WAL mode from now on
        if self.service:
            migrations.apply(path, self.service)
        self.writes = GroupCommit(self._conn, enabled=group_commit)
        self._reads = connect(path, synchronous)
        self.db = SqliteDatabase(self._conn, self._reads, self.writes)

    @classmethod
    async def open(
        cls,
        location: str | pathlib.Path,
        *,
        password_file: pathlib.Path | None = None,
        synchronous: str = SYNCHRONOUS,
        pool: postgresql.PoolSettings | None = None,
        events_enabled: bool = True,
    ) -> Self:
        """Opens the store at `location`: a SQLite file's path (in `synchronous` mode), or
        a PostgreSQL URL (its password, if not in the URL, read from `password_file`; its
        pool as `pool` says), applying pending migrations either way; `events_enabled` is
        the store's."""
        if is_server_url(location):
            database = await postgresql.connect(
                str(location), cls.service, password_file=password_file, settings=pool
            )
            store = cls(database)
        else:
            store = await asyncio.to_thread(cls, pathlib.Path(location), synchronous)
        store.events_enabled = events_enabled
        return store

    @functools.cached_property
    def outbox(self) -> outbox.Outbox:
        """The store's outbox (services.common.outbox): one per store, shared by the store's
        writes, which wake it, and the service's relay, which it wakes."""
        return outbox.Outbox(self.db)

    async def write_events(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """`self.db.write(fn)` for a write that may append events (services.common.events):
        once it has committed, this process's relay is woken to publish them. With
        `events_enabled` off, `fn` appends none (outbox.EventsOff)."""
        if not self.events_enabled:
            return await self.db.write(lambda tx: fn(outbox.EventsOff(tx)))
        result = await self.db.write(fn)
        self.outbox.notify()
        return result

    def close(self) -> None:
        """Closes a SQLite store (`aclose` closes either)."""
        if isinstance(self.db, SqliteDatabase):
            self.db.close_now()
        else:
            raise TypeError("a server database's store closes with `await store.aclose()`")

    async def aclose(self) -> None:
        await self.db.close()


def _storage_error(exc: sqlite3.OperationalError) -> ServiceError:
    log.error("storage fault: %s", exc)
    return ServiceError(ErrorKind.UNAVAILABLE, "STORAGE_UNAVAILABLE", "storage is unavailable")
