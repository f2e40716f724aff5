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
from dataclasses import dataclass, replace
from typing import Any

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


def shop_settings(workdir: pathlib.Path, seed: pathlib.Path) -> Settings:
    """shopmesh as the benchmark runs it. One user ("bench") sends every order, so the
    gateway's rate limits are lifted out of the way (their filters still run), or the
    benchmark would measure the limiter; likewise the order service's per-user quota."""
    return Settings(
        workdir=workdir,
        ports=Ports.free(),
        seed_file=seed,
        envoy_limits=UNTHROTTLED,
        service_settings={"order": BENCH_ORDER_SETTINGS},
    )


@dataclass(frozen=True)
class LoadPath:
    """One way in for the load: a system, a transport, a target, and who the caller is."""

    name: str
    system: str
    transport: str
    target: str
    who: tuple[str, str]  # ("--token", jwt) or ("--user", name)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


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
    """A running system as the benchmark sees it: its processes and its order database."""

    name: str
    cold_start_s: float
    processes: dict[str, list[int]]  # part (envoy, order, ...) -> PIDs
    order_db: pathlib.Path
    peak_rss_mb: float = 0.0

    def orders(self) -> int:
        """Orders in the order database (read-only): each confirmed order of a run must be
        a new one, not an idempotent replay of an earlier request id."""
        uri = f"file:{self.order_db}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            count: int = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        return count

    def pids(self) -> list[int]:
        return [pid for pids in self.processes.values() for pid in pids]


@dataclass
class Results:
    """Every measured run of a benchmark, as bench/report.py reads them."""

    saturation: list[Run]
    paced: list[Run]
    rate: int  # the fixed rate of the paced runs, orders/s
    wrk: dict[str, dict[str, float]]  # path name -> per_second, failed
    envoy_get: dict[str, float]  # requests, failed, cpu_us_per_request


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def cpu_by_part(processes: dict[str, list[int]]) -> dict[str, float]:
    return {part: cpu_seconds(pids) for part, pids in processes.items()}


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total / 1024


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
    before = cpu_by_part(system.processes)
    out = drive(path, f"{prefix}-{path.slug}", seconds, connections, rate)
    after = cpu_by_part(system.processes)
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


def benchmark(
    paths: list[LoadPath],
    systems: dict[str, MeasuredSystem],
    token: str,
    public: str,
    *,
    rounds: int,
    seconds: int,
    connections: int,
) -> Results:
    """The whole sequence: negative controls, warm-up, saturation rounds, fixed-rate rounds
    at half the baseline's saturation rate, the wrk cross-check, and Envoy's CPU per GET.
    `paths[0]` is shopmesh's REST path and `paths[3]` the baseline's."""
    stamp = time.time_ns()
    # The check that every order succeeded must be able to fail.
    for path in paths:  # straight to the order service, a token is no identity either
        refused = drive(replace(path, who=("--token", "bad")), f"control-{stamp}-{path.slug}", 1, 2)
        assert refused["ok"] == 0 and refused["failed"] > 0, f"negative control: {refused}"
    print("negative controls: a bad token fails every order on every path", flush=True)
    for path in paths:
        print(f"warming up {path.name}...", flush=True)
        drive(path, f"warm-{stamp}-{path.slug}", min(seconds, 3), connections)

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

    print("cross-check with wrk (REST, orders)...", flush=True)
    cross = {}
    for path in (paths[0], paths[3]):
        requests, failed = wrk(
            path.target, token, seconds, connections, f"wrk-{stamp}-{path.system}"
        )
        cross[path.name] = {"per_second": requests / seconds, "failed": failed}

    print("Envoy's CPU per request (wrk: REST GET with JWT + transcoder)...", flush=True)
    envoy = systems["shopmesh"].processes["envoy"]
    before = cpu_seconds(envoy)
    requests, failed = wrk(f"{public}/v1/products/{SKU}", token, seconds, connections)
    envoy_us = (cpu_seconds(envoy) - before) / max(requests, 1) * 1e6
    return Results(
        saturation=saturation,
        paced=paced,
        rate=rate,
        wrk=cross,
        envoy_get={"requests": requests, "failed": failed, "cpu_us_per_request": envoy_us},
    )
