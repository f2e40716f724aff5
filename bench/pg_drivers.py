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

    python -m bench.pg_drivers [--passes 3] [--seconds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import uvloop

from bench import pg_sql
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


Writes = DirectWrites | BatchedWrites
BATCHED = "+batch"


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_order(pools: dict[str, Writes], workload: str, rng: random.Random, t: Tally) -> None:
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
        pg_sql.create_order,
        *(order_id, user, uuid.uuid4().hex, items),
        owner=OWNER,
        lease_seconds=LEASE_SECONDS,
    )
    await drive_reads()
    priced = await write(
        inventory, pg_sql.reserve, order_id, user, items, hold_seconds=HOLD_SECONDS
    )
    ok = [
        created,
        await write(orders, pg_sql.record_reserved, order_id, OWNER, 1, priced),
    ]
    await drive_reads()
    total = sum(q * price for _, q, price in priced)
    ok.append(
        await write(payment, pg_sql.authorize, order_id, user, total, HOLD_SECONDS) == "AUTHORIZED"
    )
    ok.append(await write(orders, pg_sql.advance, order_id, OWNER, 1))
    await drive_reads()
    ok.append(await write(inventory, pg_sql.commit_reservation, order_id, user))
    ok.append(await write(payment, pg_sql.capture, order_id, user))
    ok.append(await write(orders, pg_sql.finish, order_id, OWNER, 1))
    for step in (pg_sql.read_saga, pg_sql.read_saga, pg_sql.read_order, pg_sql.read_saga):
        await read(step)  # the driver's last look, the waiter's, and the answer
    if not all(ok):
        t.failures["a step answered no"] += 1
    elif t.measuring:
        t.orders += 1
        t.order_ms.append((time.perf_counter() - started) * 1000)


async def worker(pools: dict[str, Writes], workload: str, seed: int, t: Tally) -> None:
    rng = random.Random(seed)
    while not t.stopping:
        try:
            await one_order(pools, workload, rng, t)
        except Exception as error:  # counted, and the run is marked failed
            t.failures[f"{type(error).__name__}: {error}"[:120]] += 1
            await asyncio.sleep(0.01)


async def prepare(server: Server) -> None:
    """The three databases, their schemas and the seed: stock and money that never run
    out, so every order is CONFIRMED."""
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
            if db == "inventory":
                await conn.executemany(
                    "INSERT INTO products (sku, name, price_minor, currency, available)"
                    " VALUES ($1, $1, $2, 'USD', $3)",
                    [(sku, PRICE, 10**12) for sku in [HOT_SKU, *SPREAD_SKUS]],
                )
            if db == "payment":
                await conn.executemany(
                    "INSERT INTO accounts (user_id, currency, available) VALUES ($1, 'USD', $2)",
                    [(user, 10**15) for user in [HOT_USER, *SPREAD_USERS]],
                )
        finally:
            await conn.close()


async def reset(server: Server, case: Case) -> None:
    """Empties the order tables, applies the case's commit settings, and starts from a
    checkpoint with the WAL statistics at zero."""
    for db in DATABASES:
        conn = await asyncpg.connect(server.dsn(db))
        try:
            await conn.execute(f"TRUNCATE {pg_sql.TABLES[db]} CASCADE")
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


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_case(server: Server, case: Case, seconds: float, warmup: float) -> dict[str, Any]:
    await reset(server, case)
    driver = case.driver.removesuffix(BATCHED)
    kind = BatchedWrites if case.driver.endswith(BATCHED) else DirectWrites
    pools: dict[str, Writes] = {
        db: kind(await pg_sql.open_pool(driver, server.dsn(db), case.pool)) for db in DATABASES
    }
    t = Tally()
    tasks = [
        asyncio.create_task(worker(pools, case.workload, seed, t))
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


def cases(
    quick: bool, drivers: Sequence[str], workloads: Sequence[str], batched: str
) -> list[Case]:
    """The base grid (every driver at concurrency 1, 16, 64, a pool as large as the
    concurrency), then commit_delay 10 and 100 µs at 16 and 64, smaller pools at 64, and
    the SQLite writer's batching (on asyncpg without the reset query) at 16 and 64."""
    grid = [Case(w, d, c, c) for w in workloads for c in (1, 16, 64) for d in drivers]
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


def summarize(results: list[dict[str, Any]]) -> str:
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_label.setdefault(r["label"], []).append(r)
    lines = [
        "| case | orders/s (range) | tx/s | tx p50 ms | tx p99 ms | order p50 ms | order p99 ms"
        " | client CPU µs/order | server CPU µs/order | fsyncs/write tx | failures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
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
            f" | {med(runs, 'fsyncs_per_write'):.2f} | {failures} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with running(SERVER_SETTINGS) as server:
        await prepare(server)
        grid = cases(args.quick, args.drivers, args.workloads, args.batched + BATCHED)
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
    return results


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
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "var" / "bench")
    args = parser.parse_args(argv)
    results = uvloop.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"pg-drivers-{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    print(summarize(results))
    print(f"\nruns: {path}")
    failed = sum(sum(r["failures"].values()) for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
