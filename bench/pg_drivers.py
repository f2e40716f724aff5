"""`make bench-pg-drivers`: asyncpg against psycopg 3 (each with its pool) on the
transactions our stores run for one order, against a real PostgreSQL 15.

One order is what the order, inventory and payment services ask of their databases for a
CreateOrder that ends CONFIRMED (bench/pg_sql.py has the statements): 8 write
transactions (create; reserve; record_reserved; authorize; advance to the pivot; commit;
capture; finish) and 10 one-statement reads (the saga driver's and the answer's), each
service on its own database and its own pool, all on one asyncio loop (uvloop, as the
services run). `concurrency` orders run at once, each one step after another.

Two workloads: `hot` is `make bench`'s (one user, one SKU, so every reserve and commit
updates the same product row and every authorize and capture the same account row);
`spread` has 1000 users and 100 SKUs, 1-3 SKUs an order (listed in any order; reserve
locks them in SKU order).

Measured per case, over `--seconds` after `--warmup`: orders/s and write transactions/s;
p50/p99 of a write transaction (from asking the pool for a connection to COMMIT done) and
of an order (all 18 steps); CPU per order of this process (getrusage) and of the server
(utime+stime of the postmaster and all its children, from /proc, before and after);
WAL fsyncs per write transaction (pg_stat_wal.wal_sync over the write transactions
counted), which shows how many commits share one flush. Durability is the default: fsync=on,
synchronous_commit=on. commit_delay/commit_siblings are set per case (ALTER SYSTEM).
Passes interleave the cases, so machine noise hits every case alike; the summary gives
the median (and the range) over passes.

`asyncpg-functions` (only on request: `--drivers`) writes each of the 8 transactions as
one call of a PL/pgSQL function (bench/pg_functions.py) in autocommit, on asyncpg's pool
without the reset query; the reads stay as they are. Before any case runs, the functions
are checked to answer and write what the statements do (bench/pg_functions_check.py).
After every case, on every path, the three databases are checked: every order CONFIRMED,
its stock and money moved once, the same orders and amounts in each database (a problem
is counted as a failure). Round trips per order are counted per path apart from the timed
runs.

    python -m bench.pg_drivers [--passes 3] [--seconds 5] [--quick] [--concurrency 1 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import random
import resource
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import uvloop

from bench import pg_functions, pg_functions_check, pg_sql
from bench.pg_server import Server, running
from shopmesh.tools import REPO

DATABASES = ("orders", "inventory", "payment")
OWNER = "bench-host:1"
LEASE_SECONDS = 10.0
HOLD_SECONDS = 600.0
HOT_SKU, HOT_USER = "SKU-TEA", "bench"
SPREAD_SKUS = [f"SKU-{n:03d}" for n in range(100)]
SPREAD_USERS = [f"user-{n:04d}" for n in range(1000)]
PRICE = 450
SERVER_SETTINGS = {
    "max_connections": "300",
    "fsync": "on",
    "synchronous_commit": "on",
    "shared_buffers": "128MB",
}
RETRIED_SQLSTATES = {"40P01", "40001"}  # deadlock, serialization failure
# Each write one call of a PL/pgSQL function (bench/pg_functions.py) in autocommit, on
# asyncpg's pool without the reset query; the reads as for every other driver.
FUNCTIONS = "asyncpg-functions"
ROUND_TRIP_ORDERS = 50  # counted apart from the timed runs, one order after another
STOCK, MONEY = 10**12, 10**15


@dataclass(frozen=True)
class Case:
    workload: str
    driver: str
    concurrency: int
    pool: int
    commit_delay_us: int = 0
    commit_siblings: int = 5

    @property
    def label(self) -> str:
        return (
            f"{self.workload} {self.driver} c={self.concurrency} pool={self.pool}"
            f" delay={self.commit_delay_us}us/{self.commit_siblings}"
        )


@dataclass
class Tally:
    """What the workers count while `measuring` is set."""

    measuring: bool = False
    stopping: bool = False
    orders: int = 0
    transactions: int = 0
    reads: int = 0
    tx_ms: list[float] = field(default_factory=list)
    order_ms: list[float] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)


Step = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Steps:
    """One order's eight write transactions, as one path spells them."""

    create_order: Step
    reserve: Step
    record_reserved: Step
    authorize: Step
    advance: Step
    commit_reservation: Step
    capture: Step
    finish: Step

    @classmethod
    def of(cls, module: Any) -> Steps:
        return cls(*(getattr(module, f.name) for f in dataclasses.fields(cls)))


STATEMENTS = Steps.of(pg_sql)
CALLS = Steps.of(pg_functions)


class DirectWrites:
    """Each write its own transaction on a pooled connection: group commit is left to
    the server (concurrent transactions share a WAL flush)."""

    def __init__(self, pool: pg_sql.Pool) -> None:
        self.pool = pool

    async def run(self, step: Step, *args: Any, **kw: Any) -> Any:
        async with self.pool.transaction() as conn:
            return await step(conn, *args, **kw)


class BatchedWrites:
    """The SQLite writer (services/common/db.py GroupCommit) ported as it is, to measure
    whether PostgreSQL needs it: one writer per database; the writes queued meanwhile run
    as savepoints of one transaction with one COMMIT, each caller answered after it."""

    def __init__(self, pool: pg_sql.Pool) -> None:
        self.pool = pool
        self._queued: list[tuple[Step, tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]]
        self._queued = []
        self._draining: asyncio.Task[None] | None = None

    async def run(self, step: Step, *args: Any, **kw: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((step, args, kw, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            outcomes: list[tuple[Any, BaseException | None]] = []
            try:
                async with self.pool.transaction() as conn:
                    for step, args, kw, _ in batch:
                        await conn.execute("SAVEPOINT step")
                        try:
                            outcomes.append((await step(conn, *args, **kw), None))
                        except Exception as refused:  # this write alone is undone
                            await conn.execute("ROLLBACK TO SAVEPOINT step")
                            outcomes.append((None, refused))
                        await conn.execute("RELEASE SAVEPOINT step")
            except Exception as failed:  # the batch did not commit: nobody's write stands
                outcomes = [(None, failed)] * len(batch)
            for (*_, future), (result, problem) in zip(batch, outcomes, strict=True):
                if problem is None:
                    future.set_result(result)
                else:
                    future.set_exception(problem)


class CalledWrites:
    """Each write one function call on a pooled connection in autocommit: the call is
    its own transaction, so no BEGIN and no COMMIT round trip."""

    def __init__(self, pool: pg_sql.Pool) -> None:
        self.pool = pool

    async def run(self, step: Step, *args: Any, **kw: Any) -> Any:
        async with self.pool.read() as conn:
            return await step(conn, *args, **kw)


Writes = DirectWrites | BatchedWrites | CalledWrites
BATCHED = "+batch"


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_order(
    pools: dict[str, Writes], steps: Steps, workload: str, rng: random.Random, t: Tally
) -> None:
    if workload == "hot":
        user, items = HOT_USER, [(HOT_SKU, 1)]
    else:
        user = rng.choice(SPREAD_USERS)
        items = [(sku, 1) for sku in rng.sample(SPREAD_SKUS, rng.randint(1, 3))]
    orders, inventory, payment = (pools[d] for d in DATABASES)
    order_id = uuid.uuid4().hex

    async def write(writes: Writes, step: Step, *args: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        while True:
            try:
                result = await writes.run(step, *args, **kw)
                break
            except (asyncpg.PostgresError, psycopg.Error) as error:
                state = getattr(error, "sqlstate", None)
                if state not in RETRIED_SQLSTATES:
                    raise
                t.retries[str(state)] += 1
        if t.measuring:
            t.transactions += 1
            t.tx_ms.append((time.perf_counter() - started) * 1000)
        return result

    async def read(step: Step) -> None:
        async with orders.pool.read() as conn:
            await step(conn, order_id)
        if t.measuring:
            t.reads += 1

    async def drive_reads() -> None:  # the saga driver's turn: its record, then the order
        await read(pg_sql.read_saga)
        await read(pg_sql.read_order)

    started = time.perf_counter()
    _, created = await write(
        orders,
        steps.create_order,
        *(order_id, user, uuid.uuid4().hex, items),
        owner=OWNER,
        lease_seconds=LEASE_SECONDS,
    )
    await drive_reads()
    priced = await write(inventory, steps.reserve, order_id, user, items, hold_seconds=HOLD_SECONDS)
    ok = [
        created,
        await write(orders, steps.record_reserved, order_id, OWNER, 1, priced),
    ]
    await drive_reads()
    total = sum(q * price for _, q, price in priced)
    ok.append(
        await write(payment, steps.authorize, order_id, user, total, HOLD_SECONDS) == "AUTHORIZED"
    )
    ok.append(await write(orders, steps.advance, order_id, OWNER, 1))
    await drive_reads()
    ok.append(await write(inventory, steps.commit_reservation, order_id, user))
    ok.append(await write(payment, steps.capture, order_id, user))
    ok.append(await write(orders, steps.finish, order_id, OWNER, 1))
    for step in (pg_sql.read_saga, pg_sql.read_saga, pg_sql.read_order, pg_sql.read_saga):
        await read(step)  # the driver's last look, the waiter's, and the answer
    if not all(ok):
        t.failures["a step answered no"] += 1
    elif t.measuring:
        t.orders += 1
        t.order_ms.append((time.perf_counter() - started) * 1000)


async def worker(
    pools: dict[str, Writes], steps: Steps, workload: str, seed: int, t: Tally
) -> None:
    rng = random.Random(seed)
    while not t.stopping:
        try:
            await one_order(pools, steps, workload, rng, t)
        except Exception as error:  # counted, and the run is marked failed
            t.failures[f"{type(error).__name__}: {error}"[:120]] += 1
            await asyncio.sleep(0.01)


EMPTY_SKU, POOR_USER = "SKU-EMPTY", "poor"  # for bench/pg_functions_check.py's refusals


async def prepare(server: Server) -> None:
    """The three databases, their schemas, bench/pg_functions.py's functions and the
    seed: stock and money that never run out, so every order is CONFIRMED (and a SKU and
    an account with nothing, for the functions' check)."""
    admin = await asyncpg.connect(server.dsn())
    try:
        for db in DATABASES:
            await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    for db in DATABASES:
        conn = await asyncpg.connect(server.dsn(db))
        try:
            await conn.execute(pg_sql.SCHEMAS[db])
            await conn.execute(pg_functions.FUNCTIONS[db])
            if db == "inventory":
                await conn.executemany(
                    "INSERT INTO products (sku, name, price_minor, currency, available)"
                    " VALUES ($1, $1, $2, 'USD', $3)",
                    [(sku, PRICE, STOCK) for sku in [HOT_SKU, *SPREAD_SKUS]]
                    + [(EMPTY_SKU, PRICE, 0)],
                )
            if db == "payment":
                await conn.executemany(
                    "INSERT INTO accounts (user_id, currency, available) VALUES ($1, 'USD', $2)",
                    [(user, MONEY) for user in [HOT_USER, *SPREAD_USERS]] + [(POOR_USER, 0)],
                )
        finally:
            await conn.close()


async def reset(server: Server, case: Case) -> None:
    """Empties the order tables, gives the stock and the money back (so that the final
    state can be checked against the orders), applies the case's commit settings, and
    starts from a checkpoint with the WAL statistics at zero."""
    refill = {
        "inventory": f"UPDATE products SET available = {STOCK}, held = 0, sold = 0"
        f" WHERE sku <> '{EMPTY_SKU}'",
        "payment": f"UPDATE accounts SET available = {MONEY}, held = 0, captured = 0"
        f" WHERE user_id <> '{POOR_USER}'",
    }
    for db in DATABASES:
        conn = await asyncpg.connect(server.dsn(db))
        try:
            await conn.execute(f"TRUNCATE {pg_sql.TABLES[db]} CASCADE")
            if db in refill:
                await conn.execute(refill[db])
        finally:
            await conn.close()
    admin = await asyncpg.connect(server.dsn())
    try:
        await admin.execute(f"ALTER SYSTEM SET commit_delay = {case.commit_delay_us}")
        await admin.execute(f"ALTER SYSTEM SET commit_siblings = {case.commit_siblings}")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute("CHECKPOINT")
        await admin.execute("SELECT pg_stat_reset_shared('wal')")
    finally:
        await admin.close()


async def server_counters(server: Server) -> dict[str, float]:
    admin = await asyncpg.connect(server.dsn())
    try:
        wal = await admin.fetchrow("SELECT wal_sync, wal_write, wal_bytes FROM pg_stat_wal")
        commits = await admin.fetchval(
            "SELECT sum(xact_commit) FROM pg_stat_database WHERE datname = ANY($1)",
            list(DATABASES),
        )
        deadlocks = await admin.fetchval("SELECT sum(deadlocks) FROM pg_stat_database")
        delay = await admin.fetchval("SHOW commit_delay")
    finally:
        await admin.close()
    assert wal is not None
    return {
        "wal_sync": float(wal["wal_sync"]),
        "wal_write": float(wal["wal_write"]),
        "wal_bytes": float(wal["wal_bytes"]),
        "commits": float(commits),
        "deadlocks": float(deadlocks),
        "commit_delay": float(str(delay).removesuffix("us") or 0),
    }


# Each a count of what is wrong once every worker has finished its order: all zero when
# every order is CONFIRMED and its stock and money moved exactly once.
FINAL_STATE_CHECKS = {
    "orders": {
        "orders not CONFIRMED": "SELECT count(*) FROM orders WHERE state <> 'CONFIRMED'",
        "sagas not CONFIRMED": "SELECT count(*) FROM orders o LEFT JOIN sagas s"
        " USING (order_id) WHERE s.phase IS DISTINCT FROM 'CONFIRMED'",
        "leases left": "SELECT count(*) FROM saga_leases",
        "totals not the items'": "SELECT count(*) FROM orders o WHERE total_minor IS"
        " DISTINCT FROM (SELECT sum(quantity * price_minor) FROM order_items i"
        " WHERE i.order_id = o.order_id)",
    },
    "inventory": {
        "reservations not COMMITTED": "SELECT count(*) FROM reservations"
        " WHERE state <> 'COMMITTED'",
        "products held or miscounted": "SELECT count(*) FROM products p LEFT JOIN"
        " (SELECT sku, sum(quantity) AS q FROM reservation_items GROUP BY sku) r USING (sku)"
        f" WHERE p.sku <> '{EMPTY_SKU}' AND (held <> 0 OR sold <> coalesce(r.q, 0)"
        f" OR available + sold <> {STOCK})",
    },
    "payment": {
        "payments not CAPTURED": "SELECT count(*) FROM payments WHERE state <> 'CAPTURED'",
        "expiry rows left": "SELECT count(*) FROM authorization_expiry",
        "accounts held or miscounted": "SELECT count(*) FROM accounts a LEFT JOIN"
        " (SELECT user_id, sum(amount_minor) AS m FROM payments GROUP BY user_id) p"
        f" USING (user_id) WHERE a.user_id <> '{POOR_USER}' AND (held <> 0"
        f" OR captured <> coalesce(p.m, 0) OR available + captured <> {MONEY})",
    },
}
# The same orders, counted in each database, and the same money: (database, statement).
FINAL_STATE_TOTALS = {
    "orders": ("orders", "SELECT count(*), coalesce(sum(total_minor), 0) FROM orders"),
    "reservations": (
        "inventory",
        "SELECT count(DISTINCT order_id), coalesce(sum(quantity * price_minor), 0)"
        " FROM reservation_items",
    ),
    "payments": ("payment", "SELECT count(*), coalesce(sum(amount_minor), 0) FROM payments"),
}


async def final_state_problems(server: Server) -> dict[str, int]:
    """What is wrong in the three databases after a case (empty if nothing): the
    assertion, on every order of the case, that both paths left what the stores would."""
    problems: dict[str, int] = {}
    totals: dict[str, tuple[int, int]] = {}
    for db in DATABASES:
        conn = await asyncpg.connect(server.dsn(db))
        try:
            for problem, sql in FINAL_STATE_CHECKS[db].items():
                if count := await conn.fetchval(sql):
                    problems[problem] = int(count)
            for name, (where, sql) in FINAL_STATE_TOTALS.items():
                if where == db:
                    row = await conn.fetchrow(sql)
                    assert row is not None
                    totals[name] = (int(row[0]), int(row[1]))
        finally:
            await conn.close()
    if len(set(totals.values())) != 1:
        problems[f"orders and money differ between the databases: {totals}"] = 1
    return problems


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_case(server: Server, case: Case, seconds: float, warmup: float) -> dict[str, Any]:
    await reset(server, case)
    pools, steps = await open_writes(server, case.driver, case.pool)
    t = Tally()
    tasks = [
        asyncio.create_task(worker(pools, steps, case.workload, seed, t))
        for seed in range(case.concurrency)
    ]
    try:
        await asyncio.sleep(warmup)
        before = await server_counters(server)
        server_before = server.cpu_seconds()
        client_before, started = client_cpu_seconds(), time.perf_counter()
        t.measuring = True
        await asyncio.sleep(seconds)
        t.measuring = False
        client_after, elapsed = client_cpu_seconds(), time.perf_counter() - started
        server_after = server.cpu_seconds()
        after = await server_counters(server)
    finally:
        t.stopping = True
        # Each worker finishes the order it is in; none may hang the whole run.
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
        for writes in pools.values():
            await writes.pool.close()
    for problem, count in (await final_state_problems(server)).items():
        t.failures[f"final state: {problem}"] += count
    commits = after["commits"] - before["commits"]
    orders = max(t.orders, 1)
    return {
        "case": dataclasses.asdict(case),
        "label": case.label,
        "seconds": elapsed,
        "orders": t.orders,
        "orders_per_s": t.orders / elapsed,
        "tx_per_s": t.transactions / elapsed,
        "tx_p50_ms": percentile(t.tx_ms, 0.5),
        "tx_p99_ms": percentile(t.tx_ms, 0.99),
        "order_p50_ms": percentile(t.order_ms, 0.5),
        "order_p99_ms": percentile(t.order_ms, 0.99),
        "client_cpu_us_per_order": (client_after - client_before) / orders * 1e6,
        "server_cpu_us_per_order": (server_after - server_before) / orders * 1e6,
        # pg_stat_database counts every read as a commit too: per write transaction.
        "fsyncs_per_write": (after["wal_sync"] - before["wal_sync"]) / max(t.transactions, 1),
        "commits": commits,
        "commit_delay_shown": after["commit_delay"],
        "deadlocks": after["deadlocks"] - before["deadlocks"],
        "load_average_1m": os.getloadavg()[0],
        "retries": dict(t.retries),
        "failures": dict(t.failures),
    }


async def open_writes(server: Server, driver: str, size: int) -> tuple[dict[str, Writes], Steps]:
    """A pool per database for the driver, each behind the way it writes, and the steps
    it writes with."""
    kind: type[Writes]
    if driver == FUNCTIONS:
        pool_driver, kind, steps = "asyncpg-noreset", CalledWrites, CALLS
    else:
        pool_driver = driver.removesuffix(BATCHED)
        kind = BatchedWrites if driver.endswith(BATCHED) else DirectWrites
        steps = STATEMENTS
    pools: dict[str, Writes] = {
        db: kind(await pg_sql.open_pool(pool_driver, server.dsn(db), size)) for db in DATABASES
    }
    return pools, steps


class CountingConn:
    """A connection that counts the statements sent on it: each is one round trip
    (asyncpg's executemany included: it pipelines the rows and waits once)."""

    def __init__(self, conn: pg_sql.Conn, counter: Counter[str]) -> None:
        self._conn, self._counter = conn, counter

    async def execute(self, sql: str, *args: Any) -> int:
        self._counter["round trips"] += 1
        return await self._conn.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        self._counter["round trips"] += 1
        return await self._conn.fetch(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._counter["round trips"] += 1
        await self._conn.executemany(sql, rows)


class CountingPool:
    """A pool whose connections count their round trips; a transaction adds its BEGIN
    and COMMIT (asyncpg's pool without the reset query sends nothing else per use)."""

    def __init__(self, pool: pg_sql.Pool, counter: Counter[str]) -> None:
        self.name, self._pool, self._counter = pool.name, pool, counter

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[pg_sql.Conn]:
        self._counter["round trips"] += 2
        async with self._pool.transaction() as conn:
            yield CountingConn(conn, self._counter)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[pg_sql.Conn]:
        async with self._pool.read() as conn:
            yield CountingConn(conn, self._counter)

    async def close(self) -> None:
        await self._pool.close()


async def round_trips_per_order(server: Server, driver: str, workload: str, orders: int) -> float:
    """Round trips per order, counted on `orders` orders one after another (apart from
    the timed runs, which count nothing)."""
    pools, steps = await open_writes(server, driver, 1)
    counter: Counter[str] = Counter()
    for writes in pools.values():
        writes.pool = CountingPool(writes.pool, counter)
    t, rng = Tally(), random.Random(0)
    try:
        for _ in range(orders):
            await one_order(pools, steps, workload, rng, t)
    finally:
        for writes in pools.values():
            await writes.pool.close()
    assert not t.failures, t.failures
    return counter["round trips"] / orders


def cases(
    quick: bool,
    drivers: Sequence[str],
    workloads: Sequence[str],
    batched: str,
    concurrencies: Sequence[int] = (1, 16, 64),
) -> list[Case]:
    """The base grid (every driver at each concurrency, a pool as large as the
    concurrency), then commit_delay 10 and 100 µs at 16 and 64, smaller pools at 64, and
    the SQLite writer's batching (on asyncpg without the reset query) at 16 and 64."""
    grid = [Case(w, d, c, c) for w in workloads for c in concurrencies for d in drivers]
    if quick:
        return grid
    main = [d for d in drivers if d != "asyncpg-noreset"]
    grid += [
        Case(w, d, c, c, delay)
        for w in workloads
        for c in (16, 64)
        for delay in (10, 100)
        for d in main
    ]
    grid += [Case(w, d, 64, pool) for w in workloads for pool in (8, 16) for d in main]
    grid += [Case(w, batched, c, c) for w in workloads for c in (16, 64)]
    return grid


def summarize(results: list[dict[str, Any]], round_trips: dict[str, float] | None = None) -> str:
    """The table; `round_trips` (per order, by `workload driver`) adds a column."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_label.setdefault(r["label"], []).append(r)
    trips = round_trips is not None
    lines = [
        "| case | orders/s (range) | tx/s | tx p50 ms | tx p99 ms | order p50 ms | order p99 ms"
        " | client CPU µs/order | server CPU µs/order | fsyncs/write tx"
        + (" | round trips/order" if trips else "")
        + " | failures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if trips else ""),
    ]

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    for label, runs in by_label.items():
        rates = [r["orders_per_s"] for r in runs]
        failures = sum(sum(r["failures"].values()) for r in runs)
        lines.append(
            f"| {label} | {med(runs, 'orders_per_s'):.0f} ({min(rates):.0f}-{max(rates):.0f})"
            f" | {med(runs, 'tx_per_s'):.0f} | {med(runs, 'tx_p50_ms'):.2f}"
            f" | {med(runs, 'tx_p99_ms'):.2f} | {med(runs, 'order_p50_ms'):.1f}"
            f" | {med(runs, 'order_p99_ms'):.1f} | {med(runs, 'client_cpu_us_per_order'):.0f}"
            f" | {med(runs, 'server_cpu_us_per_order'):.0f}"
            f" | {med(runs, 'fsyncs_per_write'):.2f}"
            + (f" | {round_trips.get(_path(runs[0]), float('nan')):.1f}" if round_trips else "")
            + f" | {failures} |"
        )
    return "\n".join(lines)


def _path(result: dict[str, Any]) -> str:
    return f"{result['case']['workload']} {result['case']['driver']}"


async def main_async(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, float]]:
    results: list[dict[str, Any]] = []
    round_trips: dict[str, float] = {}
    with running(SERVER_SETTINGS) as server:
        await prepare(server)
        if FUNCTIONS in args.drivers:
            # The functions must answer what the statements answer, refusals included,
            # and leave the same rows, before their speed means anything.
            await pg_functions_check.check(server.dsn, EMPTY_SKU, POOR_USER)
            print("bench/pg_functions.py: every answer and row as bench/pg_sql.py's", flush=True)
        grid = cases(
            args.quick, args.drivers, args.workloads, args.batched + BATCHED, args.concurrency
        )
        for driver in dict.fromkeys(c.driver for c in grid):
            for workload in args.workloads:
                await reset(server, Case(workload, driver, 1, 1))
                trips = await round_trips_per_order(server, driver, workload, ROUND_TRIP_ORDERS)
                round_trips[f"{workload} {driver}"] = trips
                print(f"{workload} {driver}: {trips:.1f} round trips per order", flush=True)
        for n in range(args.passes):
            # Alternate the direction, so no case always runs first or last.
            for case in grid if n % 2 == 0 else reversed(grid):
                result = await run_case(server, case, args.seconds, args.warmup)
                result["pass"] = n
                results.append(result)
                print(
                    f"pass {n} {case.label}: {result['orders_per_s']:.0f} orders/s,"
                    f" tx p99 {result['tx_p99_ms']:.1f} ms,"
                    f" client {result['client_cpu_us_per_order']:.0f} µs/order,"
                    f" server {result['server_cpu_us_per_order']:.0f} µs/order,"
                    f" {result['fsyncs_per_write']:.2f} fsyncs/write"
                    + (f", failures {result['failures']}" if result["failures"] else ""),
                    flush=True,
                )
    return results, round_trips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pg_drivers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured, per case")
    parser.add_argument("--warmup", type=float, default=1.5, help="per case, not measured")
    parser.add_argument("--quick", action="store_true", help="the base grid only")
    parser.add_argument("--drivers", nargs="+", default=list(pg_sql.DRIVERS))
    parser.add_argument("--batched", default="asyncpg-noreset", help="the batching's driver")
    parser.add_argument("--workloads", nargs="+", default=["spread", "hot"])
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16, 64], help="the base grid's"
    )
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "var" / "bench")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    results, round_trips = uvloop.run(main_async(args))
    load_after = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"pg-drivers-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "runs": results,
                "round_trips_per_order": round_trips,
                "load_average_before": load_before,
                "load_average_after": load_after,
            },
            indent=1,
        )
    )
    print(summarize(results, round_trips))
    print(f"\nload average before {load_before}, after {load_after}")
    print(f"\nruns: {path}")
    failed = sum(sum(r["failures"].values()) for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
