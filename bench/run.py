"""`make bench`: shopmesh against the classic FastAPI design (bench/baseline), side by side.

Four paths get the same load from the same driver (bench/load.py; every request a new
request id, so each runs a real order saga): shopmesh REST+JWT via Envoy, shopmesh gRPC
via Envoy (JWT), shopmesh gRPC straight to the order service, and the baseline's REST.
Rounds interleave (A B C D A B C D ...) so machine noise hits every path alike.

Measured:
- orders per second at saturation (closed loop), and the median of the per-round ratios
  against the baseline;
- p50 / p99 latency at a fixed offered rate (open loop at half the baseline's saturation
  rate, latency from each request's scheduled time);
- CPU time per order summed over every process of the system, from /proc, and split by
  process;
- Envoy's own CPU per request (REST GET with JWT + transcoder, driven by wrk);
- the sum of the processes' peak RSS, and cold start to healthy;
- wrk (bench/orders.lua) as a cross-check of the REST saturation figures.
A run counts only if every order was CONFIRMED; negative controls (a bad token on each
transport) prove that check can fail. Results go to bench/results/ as JSON and markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.baseline.run import start as start_baseline
from bench.load import percentile
from gateway.envoy_config import UNTHROTTLED
from shopmesh import tokens
from shopmesh.seed import write_seed
from shopmesh.system import Ports, Settings
from shopmesh.system import start as start_system
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
# The targets shopmesh is held to against the baseline, checked and printed with the results.
TARGET_RATIO, TARGET_CPU_RATIO, TARGET_ENVOY_US, TARGET_RSS_MB, TARGET_COLD_S = (
    1.5,
    0.7,
    150,
    400,
    10,
)


@dataclass(frozen=True)
class Path:
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
class System:
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
    path: Path, prefix: str, seconds: float, connections: int, rate: float | None = None
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
    path: Path,
    system: System,
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


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="per run")
    parser.add_argument("--connections", type=int, default=16, help="at saturation")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "bench" / "results")
    parser.add_argument("--workdir", type=pathlib.Path, default=REPO / "var" / "bench")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds < 1 or args.connections < 1:
        parser.error("--rounds, --seconds and --connections must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # A fresh start every run: the same databases, stock and Consul state for each.
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    seed = write_seed(args.workdir / "seed.json", SEED_PRODUCTS, SEED_ACCOUNTS)

    print("starting shopmesh (Consul, control plane, services, Envoy)...", flush=True)
    started = time.monotonic()
    # One user ("bench") sends every order: the rate limits are lifted out of the way
    # (their filters still run), or the benchmark would measure the limiter.
    shop = start_system(
        Settings(
            workdir=args.workdir / "shopmesh",
            ports=Ports.free(),
            seed_file=seed,
            envoy_limits=UNTHROTTLED,
            # Likewise the order service's per-user quota: one user has every order.
            service_settings={"order": BENCH_ORDER_SETTINGS},
        )
    )
    try:
        shop_system = System(
            "shopmesh",
            time.monotonic() - started,
            {
                "envoy": [shop.envoy.pid],
                "order": [s.pid for s in shop.order],
                "inventory": [s.pid for s in shop.inventory],
                "payment": [s.pid for s in shop.payment],
                "consul+controlplane": [shop.consul.pid, shop.controlplane.pid],
            },
            shop.order[0].workdir / "order.db",
        )
        print("starting the baseline (FastAPI + httpx)...", flush=True)
        started = time.monotonic()
        base = start_baseline(args.workdir / "baseline", seed, shop.keys.jwks)
        try:
            base_system = System(
                "baseline",
                time.monotonic() - started,
                {name: [p.pid] for name, p in base.processes.items()},
                args.workdir / "baseline" / "baseline-order.db",
            )
            token = tokens.issue("bench", (), 3600, shop.keys.private_pem.parent)
            public = f"http://{shop.public_target}"
            paths = [
                Path(SHOP_REST, "shopmesh", "rest", public, ("--token", token)),
                Path(
                    "shopmesh gRPC via Envoy",
                    "shopmesh",
                    "grpc",
                    shop.public_target,
                    ("--token", token),
                ),
                Path(
                    "shopmesh gRPC direct to order",
                    "shopmesh",
                    "grpc",
                    f"127.0.0.1:{shop.order[0].port}",
                    ("--user", "bench"),
                ),
                Path(BASELINE, "baseline", "rest", base.url("order"), ("--token", token)),
            ]
            systems = {"shopmesh": shop_system, "baseline": base_system}
            results = benchmark(args, paths, systems, token, public)
            for system in systems.values():
                system.peak_rss_mb = peak_rss_mb(
                    [pid for pids in system.processes.values() for pid in pids]
                )
        finally:
            base.stop()
    finally:
        shop.stop()
    return report(results, systems, args.out)


def benchmark(
    args: argparse.Namespace,
    paths: list[Path],
    systems: dict[str, System],
    token: str,
    public: str,
) -> dict[str, Any]:
    stamp = time.time_ns()
    # The check that every order succeeded must be able to fail.
    for path in paths:  # straight to the order service, a token is no identity either
        refused = drive(
            Path(path.name, path.system, path.transport, path.target, ("--token", "bad")),
            f"control-{stamp}-{path.slug}",
            1,
            2,
        )
        assert refused["ok"] == 0 and refused["failed"] > 0, f"negative control: {refused}"
    print("negative controls: a bad token fails every order on every path", flush=True)
    for path in paths:
        print(f"warming up {path.name}...", flush=True)
        drive(path, f"warm-{stamp}-{path.slug}", min(args.seconds, 3), args.connections)

    saturation: list[Run] = []
    for number in range(1, args.rounds + 1):
        for path in paths:
            run = measure(
                path, systems[path.system], f"r{number}-{stamp}", args.seconds, args.connections
            )
            saturation.append(run)
            print(
                f"round {number} {path.name}: {run.per_second:.0f} orders/s,"
                f" {run.cpu_us_per_order:.0f} us CPU/order, {run.failed} failed",
                flush=True,
            )
    base_rate = statistics.median(r.per_second for r in saturation if r.path == BASELINE)
    rate = round(base_rate / 2)
    paced: list[Run] = []
    for number in range(1, args.rounds + 1):
        for path in paths:
            run = measure(
                path, systems[path.system], f"p{number}-{stamp}", args.seconds, 64, rate=rate
            )
            paced.append(run)
            print(
                f"round {number} {path.name} at {rate}/s: p50 {run.p50_ms:.1f} ms,"
                f" p99 {run.p99_ms:.1f} ms, {run.failed} failed",
                flush=True,
            )

    print("cross-check with wrk (REST, orders)...", flush=True)
    cross = {}
    for path in (paths[0], paths[3]):
        requests, failed = wrk(
            path.target, token, args.seconds, args.connections, f"wrk-{stamp}-{path.system}"
        )
        cross[path.name] = {"per_second": requests / args.seconds, "failed": failed}

    print("Envoy's CPU per request (wrk: REST GET with JWT + transcoder)...", flush=True)
    envoy = systems["shopmesh"].processes["envoy"]
    before = cpu_seconds(envoy)
    requests, failed = wrk(f"{public}/v1/products/{SKU}", token, args.seconds, args.connections)
    envoy_us = (cpu_seconds(envoy) - before) / max(requests, 1) * 1e6
    return {
        "saturation": saturation,
        "paced": paced,
        "rate": rate,
        "wrk": cross,
        "envoy_get": {"requests": requests, "failed": failed, "cpu_us_per_request": envoy_us},
    }


def _without_latencies(run: Run) -> dict[str, Any]:
    return {k: v for k, v in asdict(run).items() if k != "latencies_ms"}


def report(results: dict[str, Any], systems: dict[str, System], out: pathlib.Path) -> int:
    saturation: list[Run] = results["saturation"]
    paced: list[Run] = results["paced"]
    names = list(dict.fromkeys(r.path for r in saturation))
    base_runs = [r for r in saturation if r.path == BASELINE]
    base_cpu = statistics.median(r.cpu_us_per_order for r in base_runs)
    rows, summary = [], {}
    for name in names:
        runs = [r for r in saturation if r.path == name]
        # Percentiles of every round's latencies pooled: a 10 s round at the fixed rate
        # has too few samples for a steady p99 of its own.
        pooled = [x for r in paced if r.path == name for x in r.latencies_ms]
        ratio = statistics.median(
            [r.per_second / b.per_second for r, b in zip(runs, base_runs, strict=True)]
        )
        cpu = statistics.median([r.cpu_us_per_order for r in runs])
        summary[name] = {
            "orders_per_second": statistics.median([r.per_second for r in runs]),
            "ratio": ratio,
            "p50_ms": percentile(pooled, 0.50),
            "p99_ms": percentile(pooled, 0.99),
            "cpu_us_per_order": cpu,
            "cpu_ratio": cpu / base_cpu,
        }
        s = summary[name]
        rows.append(
            f"| {name} | {s['orders_per_second']:.0f} | {ratio:.2f}x | {s['p50_ms']:.1f} |"
            f" {s['p99_ms']:.1f} | {cpu:.0f} | {s['cpu_ratio']:.2f}x |"
        )
    failed = (
        sum(r.failed for r in saturation + paced)
        + sum(c["failed"] for c in results["wrk"].values())
        + results["envoy_get"]["failed"]
    )
    rest = summary[SHOP_REST]
    base_p99 = summary[BASELINE]["p99_ms"]
    shop, base = systems["shopmesh"], systems["baseline"]
    envoy_us = results["envoy_get"]["cpu_us_per_request"]
    rest_runs = [r for r in saturation if r.path == SHOP_REST]
    split = {
        part: statistics.median(r.cpu_seconds[part] / max(r.ok, 1) * 1e6 for r in rest_runs)
        for part in shop.processes
    }
    wrk_ratio = results["wrk"][SHOP_REST]["per_second"] / results["wrk"][BASELINE]["per_second"]

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = [
        f"| path | orders/s at saturation | vs baseline | p50 ms at {results['rate']}/s"
        f" | p99 ms at {results['rate']}/s | CPU µs/order | vs baseline |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| system | peak RSS MB (all processes) | cold start to healthy s |",
        "|---|---|---|",
        *(f"| {s.name} | {s.peak_rss_mb:.0f} | {s.cold_start_s:.1f} |" for s in (shop, base)),
        "",
        "shopmesh REST CPU per order by process (µs): "
        + ", ".join(f"{part} {us:.0f}" for part, us in split.items())
        + ".",
        f"Envoy CPU per REST GET with JWT + transcoder: {envoy_us:.0f} µs.",
        f"wrk cross-check (REST orders/s): shopmesh {results['wrk'][SHOP_REST]['per_second']:.0f},"
        f" baseline {results['wrk'][BASELINE]['per_second']:.0f} ({wrk_ratio:.2f}x).",
        f"Failed requests in measured runs: {failed}.",
        "",
        "Targets:",
        f"- REST+JWT orders/s >= {TARGET_RATIO}x baseline: {rest['ratio']:.2f}x"
        f" {mark(rest['ratio'] >= TARGET_RATIO)}",
        f"- REST+JWT p99 at {results['rate']}/s <= baseline's: {rest['p99_ms']:.1f} vs"
        f" {base_p99:.1f} ms {mark(rest['p99_ms'] <= base_p99)}",
        f"- CPU per order <= {TARGET_CPU_RATIO}x baseline: {rest['cpu_ratio']:.2f}x"
        f" {mark(rest['cpu_ratio'] <= TARGET_CPU_RATIO)}",
        f"- Envoy CPU per request <= {TARGET_ENVOY_US} µs: {envoy_us:.0f}"
        f" {mark(envoy_us <= TARGET_ENVOY_US)}",
        f"- whole-system RSS < {TARGET_RSS_MB} MB: {shop.peak_rss_mb:.0f}"
        f" {mark(shop.peak_rss_mb < TARGET_RSS_MB)}",
        f"- cold start < {TARGET_COLD_S} s: {shop.cold_start_s:.1f}"
        f" {mark(shop.cold_start_s < TARGET_COLD_S)}",
    ]
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(table + "\n")
    data = {
        "summary": summary,
        "systems": {
            name: {**asdict(s), "order_db": str(s.order_db)} for name, s in systems.items()
        },
        "rate": results["rate"],
        "saturation": [_without_latencies(r) for r in saturation],
        "paced": [_without_latencies(r) for r in paced],
        "wrk": results["wrk"],
        "envoy_get": results["envoy_get"],
        "cpu_us_per_order_by_process": split,
        "failed": failed,
    }
    (out / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
