"""What `make bench` measures and how: the load paths, one driver run on a path with the
CPU it cost each process, and the whole sequence of runs (bench/run.py starts the systems,
bench/report.py turns the runs into figures).

Every order comes from one driver (bench/load.py) in its own process, so its CPU is not
the system's; CPU and peak RSS are read from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from bench import events
from gateway.envoy_config import UNTHROTTLED
from shopmesh.system import Ports, Settings
from shopmesh.tools import REPO

SCRIPT = REPO / "bench" / "orders.lua"
TICKS = os.sysconf("SC_CLK_TCK")
SKU = "SKU-TEA"
SEED_PRODUCTS = {SKU: (450, 100_000_000)}
SEED_ACCOUNTS = {"bench": 10**15}
# Every order is the one user's, many at once: the open-order quota (10) is lifted.
BENCH_ORDER_SETTINGS = {"max_open_orders_per_user": "1000000"}
BASELINE = "baseline REST (FastAPI)"
SHOP_REST = "shopmesh REST+JWT via Envoy"
SHOP_PG = "shopmesh REST+JWT via Envoy, on PostgreSQL"
SHOP_PG_SYSTEM = "shopmesh on PostgreSQL"
SHOP_OFF = "shopmesh REST+JWT via Envoy, events off"
SHOP_OFF_SYSTEM = "shopmesh, events off"
SHOP_TLS = "shopmesh REST+JWT via Envoy, mutual TLS"
SHOP_TLS_SYSTEM = "shopmesh, mutual TLS"
BACKLOG_SECONDS = 30
"""The saturation round over which the outbox backlog must not grow without bound."""
POSTGRES = "postgres"
"""The part of the PostgreSQL system that is the server: the postmaster and every process
it forked (backends, checkpointer, WAL writer, autovacuum), exited ones included."""


def shop_settings(
    workdir: pathlib.Path,
    seed: pathlib.Path,
    *,
    postgres: bool = False,
    keys_dir: pathlib.Path | None = None,
    events: bool = True,
    mutual_tls: bool = False,
) -> Settings:
    """shopmesh as the benchmark runs it. One user ("bench") sends every order, so the
    gateway's rate limits are lifted out of the way (their filters still run), or the
    benchmark would measure the limiter; likewise the order service's per-user quota.
    With `postgres`, every store is in a PostgreSQL cluster of its own under `workdir`;
    `keys_dir` (else `<workdir>/jwt`) holds the JWT keys, so two systems can share them;
    with `mutual_tls`, every part is on mutual TLS (docs/architecture.md)."""
    return Settings(
        workdir=workdir,
        ports=Ports.free(),
        seed_file=seed,
        envoy_limits=UNTHROTTLED,
        service_settings={"order": BENCH_ORDER_SETTINGS},
        postgres=postgres,
        keys_dir=keys_dir,
        events=events,
        mutual_tls=mutual_tls,
    )


@dataclass(frozen=True)
class LoadPath:
    """One way in for the load: a system, a transport, a target, and who the caller is."""

    name: str
    system: str
    transport: str
    target: str
    who: tuple[str, str]  # ("--token", jwt) or ("--user", name)
    short: str = ""
    """A shorter name for the request ids, if the name is too long for them (64 chars)."""

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", (self.short or self.name).lower()).strip("-")


@dataclass
class Run:
    """One driver run on one path: saturation (connections) or a fixed rate."""

    path: str
    requests: int
    ok: int
    seconds: float
    p50_ms: float
    p99_ms: float
    latencies_ms: list[float]
    cpu_seconds: dict[str, float]
    failures: dict[str, int]
    new_orders: int
    rate: float | None = None
    started_at: float = 0.0
    """Wall-clock time the run began and ended (the events' lag is measured over it)."""
    ended_at: float = 0.0

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds

    @property
    def failed(self) -> int:
        """Failed orders, and confirmed ones that were not new orders (replays)."""
        return self.requests - self.ok + max(0, self.ok - self.new_orders)

    @property
    def cpu_us_per_order(self) -> float:
        return sum(self.cpu_seconds.values()) / max(self.ok, 1) * 1e6


@dataclass
class MeasuredSystem:
    """A running system as the benchmark sees it: its processes and its order database (a
    SQLite file, or a PostgreSQL DSN)."""

    name: str
    cold_start_s: float
    processes: dict[str, list[int]]  # part (envoy, order, ...) -> PIDs
    order_db: pathlib.Path | str
    peak_rss_mb: float = 0.0
    pss_mb: float = 0.0
    """All its processes' PSS at the end: each shared page (the Python processes'
    libraries) counted once over them all, where the summed RSS counts it per process."""
    trees: frozenset[str] = frozenset()
    """Parts whose CPU is their processes' with every descendant's (PostgreSQL's server)."""
    durability: dict[str, str] = field(default_factory=dict)
    """How its commits are made durable, as read from the running system."""
    databases: dict[str, pathlib.Path] = field(default_factory=dict)
    """Its services' SQLite files, for the events' figures (bench/events.py)."""

    def orders(self) -> int:
        """Orders in the order database (read-only): each confirmed order of a run must be
        a new one, not an idempotent replay of an earlier request id."""
        if isinstance(self.order_db, str):
            with psycopg.connect(self.order_db, connect_timeout=5) as pg:
                row = pg.execute("SELECT count(*) FROM orders").fetchone()
            return int(row[0]) if row else 0
        uri = f"file:{self.order_db}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            count: int = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        return count

    def pids(self) -> list[int]:
        return [pid for pids in self.processes.values() for pid in pids]

    def cpu_by_part(self) -> dict[str, float]:
        return {
            part: cpu_seconds(pids, tree=part in self.trees)
            for part, pids in self.processes.items()
        }


@dataclass
class Results:
    """Every measured run of a benchmark, as bench/report.py reads them."""

    saturation: list[Run]
    paced: list[Run]
    rate: int  # the fixed rate of the paced runs, orders/s
    wrk: dict[str, dict[str, float]]  # path name -> per_second, failed
    envoy_get: dict[str, float]  # requests, failed, cpu_us_per_request
    pg_per_order: dict[str, float] = field(default_factory=dict)
    """The PostgreSQL server's counters (`pg_counters`) per order on it, over every
    measured run; "orders" is how many orders that was."""
    lag: dict[str, float] = field(default_factory=dict)
    """The events' lag from commit to the read model at the fixed rate (bench/events.py)."""
    backlog: dict[str, float] = field(default_factory=dict)
    """The outbox backlog over a BACKLOG_SECONDS saturation round (bench/events.py)."""
    backlog_run: Run | None = None


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (field 3, the state, first)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def descendants(pid: int) -> list[int]:
    """Every living process below `pid`, from each process's parent in /proc."""
    parents: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def cpu_seconds(pids: list[int], *, tree: bool = False) -> float:
    """The CPU (user + system) the processes used so far; with `tree`, with every
    descendant's: the living ones' own, and the exited ones' as their parents' reaped
    children's time (cutime + cstime; PostgreSQL's postmaster reaps each backend)."""
    total = 0
    for pid in pids:
        for each in [pid, *descendants(pid)] if tree else [pid]:
            if (fields := _stat(each)) is None:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if tree:
                total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / TICKS


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total / 1024


def tree_pss_mb(pid: int) -> float:
    """The proportional set size of `pid` and its descendants now: each shared page
    counted once over them all. Their peak RSS summed would count PostgreSQL's shared
    buffers once per backend that touched them."""
    total = 0
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            rollup = pathlib.Path(f"/proc/{each}/smaps_rollup").read_text()
            match = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
            total += int(match.group(1)) if match else 0
    return total / 1024


def memory_mb(system: MeasuredSystem) -> float:
    """The system's memory: the sum of its processes' peak RSS, and of a server's
    (`MeasuredSystem.trees`) processes the PSS at the end."""
    flat = [p for part, pids in system.processes.items() if part not in system.trees for p in pids]
    trees = [p for part in system.trees for p in system.processes[part]]
    return peak_rss_mb(flat) + sum(tree_pss_mb(pid) for pid in trees)


def pss_mb(system: MeasuredSystem) -> float:
    """The PSS of all the system's processes (and their descendants) now."""
    return sum(tree_pss_mb(pid) for pids in system.processes.values() for pid in pids)


def drive(
    path: LoadPath, prefix: str, seconds: float, connections: int, rate: float | None = None
) -> dict[str, Any]:
    """One bench/load.py run in its own process (its CPU is not the system's)."""
    command = [
        sys.executable,
        "-m",
        "bench.load",
        "--transport",
        path.transport,
        "--target",
        path.target,
        *path.who,
        "--sku",
        SKU,
        "--prefix",
        prefix,
        "--seconds",
        str(seconds),
        "--connections",
        str(connections),
    ]
    if rate is not None:
        command += ["--rate", f"{rate:.1f}", "--latencies"]
    ran = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if ran.returncode != 0:
        raise SystemExit(f"load driver failed on {path.name}:\n{ran.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(ran.stdout)
    return result


def measure(
    path: LoadPath,
    system: MeasuredSystem,
    prefix: str,
    seconds: float,
    connections: int,
    *,
    rate: float | None = None,
) -> Run:
    orders = system.orders()
    before = system.cpu_by_part()
    started_at = time.time()
    out = drive(path, f"{prefix}-{path.slug}", seconds, connections, rate)
    ended_at = time.time()
    after = system.cpu_by_part()
    return Run(
        path=path.name,
        requests=out["requests"],
        ok=out["ok"],
        seconds=out["seconds"],
        p50_ms=out["p50_ms"],
        p99_ms=out["p99_ms"],
        latencies_ms=out["latencies_ms"],
        cpu_seconds={part: after[part] - before[part] for part in before},
        failures=out["failures"],
        new_orders=system.orders() - orders,
        rate=rate,
        started_at=started_at,
        ended_at=ended_at,
    )


def wrk(url: str, token: str, seconds: float, connections: int, *script: str) -> tuple[int, int]:
    """(requests, failed requests) of one wrk run; with `script`, bench/orders.lua and its
    arguments (run prefix), else a plain GET of `url`."""
    lua = ["-s", str(SCRIPT), url, "--", script[0], token, SKU] if script else [url]
    headers = [] if script else ["-H", f"Authorization: Bearer {token}"]
    ran = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", *headers, *lua],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    out = ran.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return requests, failed


def _rounds(
    paths: list[LoadPath],
    systems: dict[str, MeasuredSystem],
    *,
    rounds: int,
    prefix: str,
    seconds: float,
    connections: int,
    rate: int | None = None,
) -> list[Run]:
    """`rounds` runs of every path, interleaved (A B C A B C ...) so that machine noise
    hits every path alike; each run printed as it ends."""
    runs: list[Run] = []
    for number in range(1, rounds + 1):
        for path in paths:
            run = measure(
                path, systems[path.system], prefix.format(number), seconds, connections, rate=rate
            )
            runs.append(run)
            if rate is None:
                said = f"{run.per_second:.0f} orders/s, {run.cpu_us_per_order:.0f} us CPU/order"
                print(f"round {number} {path.name}: {said}, {run.failed} failed", flush=True)
            else:
                said = f"p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms"
                print(
                    f"round {number} {path.name} at {rate}/s: {said}, {run.failed} failed",
                    flush=True,
                )
    return runs


SERVICE_DATABASES = ("order", "inventory", "payment")
"""The PostgreSQL system's databases, one per service (shopmesh/postgres.py)."""
PG_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
)
"""pg_stat_database's counters per service database that show what an order costs the
server: its transactions and the rows its statements read and wrote."""
WAL_COUNTERS = ("wal_records", "wal_write", "wal_sync")
"""pg_stat_wal's: WAL records, and the writes and fsyncs of the WAL (group commit shows as
fewer fsyncs than commits)."""


def pg_counters(admin: Callable[[], psycopg.Connection[Any]]) -> dict[str, float]:
    """The server's counters now, "<database>.<counter>" and "wal.<counter>". A backend
    hands its counts to the shared statistics at most once a second, and an idle one only
    after 10 s (PostgreSQL 15): read over a window that long, the counts are whole."""
    columns = ", ".join(PG_COUNTERS)
    with admin() as conn:
        rows = conn.execute(
            f"SELECT datname, {columns} FROM pg_stat_database WHERE datname = ANY(%s)",
            [list(SERVICE_DATABASES)],
        ).fetchall()
        wal = conn.execute(f"SELECT {', '.join(WAL_COUNTERS)} FROM pg_stat_wal").fetchone()
    counters = {
        f"{row[0]}.{name}": float(value)
        for row in rows
        for name, value in zip(PG_COUNTERS, row[1:], strict=True)
    }
    counters.update({f"wal.{n}": float(v) for n, v in zip(WAL_COUNTERS, wal or (), strict=True)})
    return counters


def benchmark(
    paths: list[LoadPath],
    systems: dict[str, MeasuredSystem],
    token: str,
    public: str,
    *,
    rounds: int,
    seconds: int,
    connections: int,
    pg_admin: Callable[[], psycopg.Connection[Any]] | None = None,
    backlog_seconds: int = BACKLOG_SECONDS,
) -> Results:
    """The whole sequence: negative controls, warm-up, saturation rounds, fixed-rate rounds
    at half the baseline's saturation rate, the events' lag over the fixed-rate rounds of
    shopmesh's REST path, its outbox backlog over a `backlog_seconds` saturation round, the
    wrk cross-check, and Envoy's CPU per GET.
    With `pg_admin` (the PostgreSQL system's server), its counters per order over every
    measured run on it (`Results.pg_per_order`)."""
    by_name = {path.name: path for path in paths}
    stamp = time.time_ns()
    # The check that every order succeeded must be able to fail.
    for path in paths:  # straight to the order service, a token is no identity either
        refused = drive(replace(path, who=("--token", "bad")), f"control-{stamp}-{path.slug}", 1, 2)
        assert refused["ok"] == 0 and refused["failed"] > 0, f"negative control: {refused}"
    print("negative controls: a bad token fails every order on every path", flush=True)
    for path in paths:
        print(f"warming up {path.name}...", flush=True)
        drive(path, f"warm-{stamp}-{path.slug}", min(seconds, 3), connections)

    pg_system = systems.get(SHOP_PG_SYSTEM)
    pg_before = pg_counters(pg_admin) if pg_admin is not None else {}
    pg_orders = pg_system.orders() if pg_system is not None else 0
    saturation = _rounds(
        paths,
        systems,
        rounds=rounds,
        prefix=f"r{{}}-{stamp}",
        seconds=seconds,
        connections=connections,
    )
    base_rate = statistics.median(r.per_second for r in saturation if r.path == BASELINE)
    rate = round(base_rate / 2)
    paced = _rounds(
        paths,
        systems,
        rounds=rounds,
        prefix=f"p{{}}-{stamp}",
        seconds=seconds,
        connections=64,
        rate=rate,
    )

    shop = systems["shopmesh"]
    windows = [(r.started_at, r.ended_at) for r in paced if r.path == SHOP_REST]
    print("the events' lag from commit to the read model at the fixed rate...", flush=True)
    lag = events.lag_summary(events.event_lags(shop.databases, windows))
    print(
        f"lag over {lag['events']:.0f} events: p50 {lag['p50_ms']:.0f} ms,"
        f" p99 {lag['p99_ms']:.0f} ms",
        flush=True,
    )
    print(f"the outbox backlog over a {backlog_seconds} s saturation round...", flush=True)
    with events.BacklogSampler(shop.databases) as sampler:
        backlog_run = measure(by_name[SHOP_REST], shop, f"b-{stamp}", backlog_seconds, connections)
    made = events.events_between(shop.databases, backlog_run.started_at, backlog_run.ended_at)
    backlog = sampler.figures(len(made) / backlog_run.seconds)
    print(
        f"backlog: {backlog['start']:.0f} at the start, peak {backlog['peak']:.0f},"
        f" {backlog['end']:.0f} at the end ({backlog_run.per_second:.0f} orders/s)",
        flush=True,
    )

    print("cross-check with wrk (REST, orders)...", flush=True)
    cross = {}
    for path in (by_name[SHOP_REST], by_name[BASELINE]):
        requests, failed = wrk(
            path.target, token, seconds, connections, f"wrk-{stamp}-{path.system}"
        )
        cross[path.name] = {"per_second": requests / seconds, "failed": failed}

    print("Envoy's CPU per request (wrk: REST GET with JWT + transcoder)...", flush=True)
    envoy = systems["shopmesh"].processes["envoy"]
    before = cpu_seconds(envoy)
    requests, failed = wrk(f"{public}/v1/products/{SKU}", token, seconds, connections)
    envoy_us = (cpu_seconds(envoy) - before) / max(requests, 1) * 1e6
    # The last run on PostgreSQL ended two wrk runs (more than 10 s) ago: its counts are in.
    pg_per_order: dict[str, float] = {}
    if pg_admin is not None and pg_system is not None:
        orders = max(pg_system.orders() - pg_orders, 1)
        after = pg_counters(pg_admin)
        pg_per_order = {k: (after[k] - pg_before.get(k, 0.0)) / orders for k in after}
        pg_per_order["orders"] = orders
    return Results(
        saturation=saturation,
        paced=paced,
        rate=rate,
        wrk=cross,
        envoy_get={"requests": requests, "failed": failed, "cpu_us_per_request": envoy_us},
        pg_per_order=pg_per_order,
        lag=lag,
        backlog=backlog,
        backlog_run=backlog_run,
    )
