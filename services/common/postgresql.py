"""The store interface (services.common.database) on PostgreSQL, through an asyncpg pool.

Why asyncpg, and a pool of this shape: bench/pg_drivers.py measured both drivers on our
stores' transactions (bench/results/pg-drivers-2026-12-02.md): asyncpg made 1.3-2x the
orders/s of psycopg 3 at half its client CPU; its default reset query on every release
cost 15-22% and is turned off (a connection goes back to the pool only after its
transaction ended, and we set no session state to reset); `commit_delay` never helped,
so group commit is left to the server's concurrent transactions.

Transactions run under READ COMMITTED, PostgreSQL's default; the stores' statements are
written so that is enough (docs/postgres-concurrency.md): conditional state changes, ids
claimed by unique keys, rows locked in one order, `Tx.lock` for a user's orders.

- A write is one transaction on one pooled connection. A deadlock (40P01) or a
  serialization failure (40001) rolled it back entirely: it is run again, up to
  RETRIES times with a jittered backoff. So is a write whose connection was lost before
  its COMMIT was sent (nothing of it is in the database: the server rolls back a
  transaction whose client went away); a connection lost during the COMMIT leaves the
  outcome unknown, and the caller hears STORAGE_UNAVAILABLE and retries by its own
  idempotency key, as after any storage fault.
- Storage faults (the server gone or refusing connections, a login refused, no pooled
  connection free within `PoolSettings.acquire_timeout_seconds`, a lock or statement
  past its timeout, a full disk) answer UNAVAILABLE / STORAGE_UNAVAILABLE, as SQLite's
  do. A call that got no connection in time is not run again: the caller waits at most
  the acquire timeout. Anything else (a constraint
  a store did not expect, bad SQL) is a bug and is raised as it is (INTERNAL).
- A read with `snapshot` is a REPEATABLE READ READ ONLY transaction: its statements see
  one moment. A plain read is one statement in autocommit.
- Times: `Tx.now()` is the server's `clock_timestamp()`, so every instance on every host
  compares leases, holds and windows by one clock.

No library translates SQLite's `?` placeholders to PostgreSQL's `$n` (the stores' SQL is
written once, in SQLite's style): `numbered` does, with SQLite's own numbering rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pathlib
import random
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, TypeVar

if TYPE_CHECKING:
    import asyncpg

from services.common import migrations
from services.common.database import Row, Tx
from services.common.errors import ErrorKind, ServiceError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PoolSettings:
    """How a service uses its PostgreSQL server; the defaults are what services run with
    (services.common.config's db_* settings set them)."""

    size: int = 16
    """Connections per instance at most: where orders/s stopped growing in
    bench/pg_drivers.py (64 was slower than 16). A 3-service instance set holds 3x this."""
    acquire_timeout_seconds: float = 5.0
    """How long a transaction waits for a free pooled connection before it is refused as
    a storage fault (the pool is exhausted): the SQLite busy timeout's value."""
    lock_timeout_ms: int = 5000
    """How long a statement waits for a row lock (`lock_timeout`), as SQLite's busy
    timeout: a stuck transaction elsewhere costs a call STORAGE_UNAVAILABLE, not a hung
    RPC."""
    statement_timeout_ms: int = 30000
    """The longest any one statement may run (`statement_timeout`); ours take
    milliseconds."""
    connect_timeout_seconds: float = 5.0


RETRIES = 3
"""Runs again of a write rolled back by a deadlock, a serialization failure or a
connection lost before its COMMIT."""
RETRY_BACKOFF_SECONDS = 0.01

_RETRIED_SQLSTATES = frozenset({"40P01", "40001"})
# SQLSTATE classes and codes that mean the storage, not the statement, failed: connection
# exceptions (08), insufficient resources (53: disk full, too many connections), operator
# intervention (57: query_canceled by statement_timeout, admin_shutdown, cannot_connect_now),
# lock_not_available (55P03, lock_timeout) and system errors (58: I/O).
_STORAGE_SQLSTATE_CLASSES = ("08", "53", "57", "58")
_STORAGE_SQLSTATES = frozenset({"55P03"})


class NoConnection(Exception):
    """No pooled connection could be had (its cause says why): a storage fault."""


class ConnectionLost(Exception):
    """The pooled connection broke under a call, and the driver said so with an error of
    its own (its cause) rather than a connection error: as a lost connection."""


class PostgresTx:
    """A `Tx` over one asyncpg connection."""

    for_share = " FOR SHARE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return _rowcount(await self._conn.execute(numbered(sql), *params))

    async def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        rows = list(params)
        if rows:  # asyncpg prepares the statement even for no rows
            await self._conn.executemany(numbered(sql), rows)

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        row: Row | None = await self._conn.fetchrow(numbered(sql), *params)
        return row

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return list(await self._conn.fetch(numbered(sql), *params))

    async def now(self) -> float:
        value = await self._conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
        return float(value)

    async def lock(self, key: str) -> None:
        # Held until the transaction ends (COMMIT or ROLLBACK): it cannot leak. Keys of
        # different meaning share one 64-bit space; the caller prefixes them ("user:...").
        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)


class PostgresDatabase:
    """The `Database` on a pool of connections to one service's database."""

    def __init__(self, pool: asyncpg.Pool, name: str, settings: PoolSettings) -> None:
        self._pool = pool
        self._name = name
        self._acquire_timeout = settings.acquire_timeout_seconds
        self._expiring: asyncio.Future[None] | None = None  # held: tasks are kept weakly

    async def read(self, fn: Callable[[Tx], Awaitable[T]], *, snapshot: bool = False) -> T:
        for attempt in range(RETRIES + 1):
            try:
                async with self._connection() as conn:
                    if not snapshot:
                        return await fn(PostgresTx(conn))
                    async with conn.transaction(isolation="repeatable_read", readonly=True):
                        return await fn(PostgresTx(conn))
            except Exception as exc:
                # A read changes nothing: whatever failed it, running it again is safe.
                if attempt == RETRIES or not self._may_retry(exc, sent_commit=False):
                    self._raise_fault(exc)
            await _backoff(attempt)
        raise AssertionError("unreachable")

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        for attempt in range(RETRIES + 1):
            sent_commit = False
            try:
                async with self._connection() as conn:
                    transaction = conn.transaction()
                    await transaction.start()
                    try:
                        result = await fn(PostgresTx(conn))
                    except BaseException:
                        if not _broken(conn):  # else the server rolls it back itself
                            await transaction.rollback()
                        raise
                    sent_commit = True
                    await transaction.commit()
                    return result
            except Exception as exc:
                if attempt == RETRIES or not self._may_retry(exc, sent_commit=sent_commit):
                    self._raise_fault(exc)
            await _backoff(attempt)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A pooled connection; NoConnection if none is had within the acquire timeout
        or the server refuses a new one (for whatever reason: a login refused is as much
        a storage fault as a server gone; no statement of the call ran)."""
        try:
            conn = await self._pool.acquire(timeout=self._acquire_timeout)
        except Exception as exc:
            raise NoConnection(f"no connection: {type(exc).__name__}: {exc}") from exc
        try:
            yield conn
        except Exception as exc:
            if isinstance(exc, asyncpg.InternalClientError) and not _broken(conn):
                # The driver lost its place in the protocol (a server dying mid-message
                # leaves it waiting for a reply that never comes): never to be used again.
                conn.terminate()
            if _broken(conn) and not _connection_lost(exc) and not isinstance(exc, ServiceError):
                # The driver's own error on a connection that broke under it: a lost
                # connection, retried or reported as one, never an INTERNAL.
                raise ConnectionLost(f"connection lost: {type(exc).__name__}: {exc}") from exc
            raise
        finally:
            await self._pool.release(conn)

    def _may_retry(self, exc: Exception, *, sent_commit: bool) -> bool:
        """Whether the transaction may run again: it was rolled back entirely."""
        if isinstance(exc, NoConnection):
            # Nothing ran. A connection refused or lost while connecting (a server
            # restarting) is tried again; a timeout's time is spent, and a login refused
            # stays refused.
            cause = exc.__cause__
            return isinstance(cause, Exception) and _connection_lost(cause)
        if _sqlstate(exc) in _RETRIED_SQLSTATES:
            log.info("%s: transaction rolled back (%s), running it again", self._name, exc)
            return True
        if _connection_lost(exc):
            # Other pooled connections to a restarted server are dead too: replace them
            # as they are next taken, rather than fail one call on each.
            self._expiring = asyncio.ensure_future(self._pool.expire_connections())
            return not sent_commit
        return False

    def _raise_fault(self, exc: Exception) -> NoReturn:
        """Raises what the caller hears: STORAGE_UNAVAILABLE for a storage fault, else
        the error itself."""
        if isinstance(exc, ServiceError) or not _is_storage_fault(exc):
            raise exc
        log.error("%s: storage fault: %s: %s", self._name, type(exc).__name__, exc)
        raise ServiceError(
            ErrorKind.UNAVAILABLE, "STORAGE_UNAVAILABLE", "storage is unavailable"
        ) from exc


async def connect(
    url: str,
    service: str,
    *,
    password_file: pathlib.Path | None = None,
    settings: PoolSettings | None = None,
) -> PostgresDatabase:
    """A pool on the service's database at `url` (its password in the URL, or in
    `password_file`), with the service's pending migrations applied."""
    # Imported here, not above: a service on SQLite never loads the driver (about 5 MB
    # of each process's memory). Everything else here that names it runs on the pool.
    global asyncpg  # noqa: PLW0603
    import asyncpg  # noqa: PLC0415

    settings = settings or PoolSettings()
    password = read_password(password_file) if password_file is not None else None
    await asyncio.to_thread(migrations.apply, url, service, password=password)

    async def no_reset(conn: asyncpg.Connection) -> None:
        return None  # see the module docstring: nothing to reset, one round trip saved

    try:
        pool = await asyncpg.create_pool(
            url,
            password=password,
            min_size=1,
            max_size=settings.size,
            reset=no_reset,
            timeout=settings.connect_timeout_seconds,
            server_settings={
                "lock_timeout": str(settings.lock_timeout_ms),
                "statement_timeout": str(settings.statement_timeout_ms),
                "application_name": f"shopmesh-{service}",
            },
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise ConnectionError(f"cannot connect to {redacted(url)}: {exc}") from exc
    return PostgresDatabase(pool, service, settings)


def read_password(path: pathlib.Path) -> str:
    """A password file's password (its first line)."""
    lines = path.read_text().splitlines()
    return lines[0] if lines else ""


def redacted(url: str) -> str:
    """`url` with any password in it replaced, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@functools.cache
def numbered(sql: str) -> str:
    """`sql` with SQLite's placeholders as PostgreSQL's: `?N` is `$N`, and a bare `?` is
    one more than the largest number so far (SQLite's rule), so `?, ?` is `$1, $2`."""
    largest = 0

    def number(match: re.Match[str]) -> str:
        nonlocal largest
        n = int(match.group(1)) if match.group(1) else largest + 1
        largest = max(largest, n)
        return f"${n}"

    return _PLACEHOLDER.sub(number, sql)


_PLACEHOLDER = re.compile(r"\?(\d*)")


def _rowcount(status: str) -> int:
    """The rows a statement changed, from its command tag ("UPDATE 2", "INSERT 0 1")."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")


def _connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        # An OSError too, but never a lost connection: the pool's acquire timeout (no
        # connection free, or a connect that did not finish in time) whose time is spent.
        # Run again, a call would wait that long again, up to RETRIES more times.
        return False
    return isinstance(
        exc,
        OSError
        | ConnectionLost
        | asyncpg.ConnectionDoesNotExistError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError,
    ) or _sqlstate(exc).startswith("08")


def _broken(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    """Whether a connection handed out by the pool broke: closed, or already taken back
    by the pool, which it does the moment it sees one close (the proxy then raises
    InterfaceError at any use; nothing else releases it before the call is done)."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


def _is_storage_fault(exc: BaseException) -> bool:
    state = _sqlstate(exc)
    return (
        isinstance(exc, NoConnection)
        or _connection_lost(exc)
        or state in _STORAGE_SQLSTATES
        or state.startswith(_STORAGE_SQLSTATE_CLASSES)
    )


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(RETRY_BACKOFF_SECONDS * (2**attempt) * (0.5 + random.random()))
