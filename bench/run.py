"""`make bench`: shopmesh against the classic FastAPI design (bench/baseline), side by side.

Both systems get the same load from the same tool: wrk with bench/orders.lua, which
sends every request with a new request id, so each one runs a real order saga (JWT check,
stock hold, payment, commit, capture). Rounds interleave (A B A B ...) so machine noise
hits both alike. A run counts only if every response was 2xx; a negative control (a bad
token) proves that check can fail. Reported per system: orders per second at saturation
(and the median of the per-round ratios), p50/p99 latency at saturation, CPU time per
order summed over every process of the system (from /proc), the sum of the processes'
peak RSS, and cold start to healthy. Results go to bench/results/ as JSON and markdown.

Not measured yet (issue 6 is open): the gRPC paths (through Envoy and direct), latency at
a fixed offered rate (wrk has no rate limit; wrk2 is not packaged here).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from bench.baseline.run import start as start_baseline
from shopmesh import tokens
from shopmesh.system import Ports, Settings
from shopmesh.system import start as start_system
from shopmesh.tools import REPO
from tests.helpers import write_seed

SCRIPT = REPO / "bench" / "orders.lua"
TICKS = os.sysconf("SC_CLK_TCK")
SEED_PRODUCTS = {"SKU-TEA": (450, 100_000_000)}
SEED_ACCOUNTS = {"bench": 10**15}


@dataclass
class Round:
    system: str
    requests: int
    non_2xx: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_order(self) -> float:
        return self.cpu_seconds / max(self.requests, 1) * 1e6


@dataclass
class Result:
    system: str
    cold_start_s: float
    peak_rss_mb: float = 0.0
    rounds: list[Round] = field(default_factory=list)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total / 1024


def _ms(out: str, percentile: str) -> float:
    """A latency percentile of wrk's --latency table in ms (NaN if wrk printed none)."""
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if match is None:
        return float("nan")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def wrk(
    url: str, token: str, seconds: float, connections: int, run: str
) -> tuple[int, int, float, float]:
    """(requests, non-2xx responses, p50 ms, p99 ms) of one wrk run."""
    ran = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(SCRIPT),
            url,
            "--",
            run,
            token,
            "SKU-TEA",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    out = ran.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return requests, non_2xx, _ms(out, "50"), _ms(out, "99")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="per round and system")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "bench" / "results")
    parser.add_argument("--workdir", type=pathlib.Path, default=REPO / "var" / "bench")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    seed = write_seed(args.workdir / "seed.json", SEED_PRODUCTS, SEED_ACCOUNTS)

    print("starting shopmesh (Consul, control plane, services, Envoy)...", flush=True)
    started = time.monotonic()
    shop = start_system(
        Settings(workdir=args.workdir / "shopmesh", ports=Ports.free(), seed_file=seed)
    )
    results = {"shopmesh": Result("shopmesh REST+JWT via Envoy", time.monotonic() - started)}
    try:
        print("starting the baseline (FastAPI + httpx)...", flush=True)
        started = time.monotonic()
        base = start_baseline(args.workdir / "baseline", seed, shop.keys.jwks)
        results["baseline"] = Result("baseline REST (FastAPI)", time.monotonic() - started)
        try:
            token = tokens.issue("bench", (), 3600, shop.keys.private_pem.parent)
            targets = {
                "shopmesh": (
                    f"http://{shop.public_target}",
                    [
                        shop.consul.pid,
                        shop.envoy.pid,
                        shop.controlplane.pid,
                        *(s.pid for s in shop.instances()),
                    ],
                ),
                "baseline": (base.url("order"), [p.pid for p in base.processes.values()]),
            }
            # The check that every response succeeded must be able to fail.
            _, refused, _, _ = wrk(targets["shopmesh"][0], "not-a-token", 1, 2, "control")
            assert refused > 0, "negative control: wrk did not report refused requests"
            for name, (url, _) in targets.items():
                print(f"warming up {name}...", flush=True)
                wrk(
                    url,
                    token,
                    min(args.seconds, 3),
                    args.connections,
                    f"warm-{name}-{time.time_ns()}",
                )
            for number in range(1, args.rounds + 1):
                for name, (url, pids) in targets.items():
                    before = cpu_seconds(pids)
                    requests, bad, p50, p99 = wrk(
                        url,
                        token,
                        args.seconds,
                        args.connections,
                        f"r{number}-{name}-{time.time_ns()}",
                    )
                    spent = cpu_seconds(pids) - before
                    measured = Round(name, requests, bad, args.seconds, p50, p99, spent)
                    results[name].rounds.append(measured)
                    print(
                        f"round {number} {name}: {measured.per_second:.0f} orders/s,"
                        f" p99 {p99:.0f} ms, {measured.cpu_us_per_order:.0f} us CPU/order,"
                        f" {bad} failed",
                        flush=True,
                    )
            for name, (_, pids) in targets.items():
                results[name].peak_rss_mb = peak_rss_mb(pids)
        finally:
            base.stop()
    finally:
        shop.stop()
    return report(results, args.out)


def report(results: dict[str, Result], out: pathlib.Path) -> int:
    shop, base = results["shopmesh"], results["baseline"]
    failed = sum(r.non_2xx for r in shop.rounds + base.rounds)
    ratios = [s.per_second / b.per_second for s, b in zip(shop.rounds, base.rounds, strict=True)]
    rows = []
    for result in (shop, base):
        rounds = result.rounds
        rate = statistics.median(r.per_second for r in rounds)
        p50 = statistics.median(r.p50_ms for r in rounds)
        p99 = statistics.median(r.p99_ms for r in rounds)
        cpu = statistics.median(r.cpu_us_per_order for r in rounds)
        rows.append(
            f"| {result.system} | {rate:.0f} | {p50:.0f} | {p99:.0f} | {cpu:.0f} |"
            f" {result.peak_rss_mb:.0f} | {result.cold_start_s:.1f} |"
        )
    table = "\n".join(
        [
            "| system | orders/s | p50 ms | p99 ms | CPU µs/order | peak RSS MB | cold start s |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"shopmesh / baseline orders/s, median of {len(ratios)} interleaved rounds: "
            f"{statistics.median(ratios):.2f}x; failed requests: {failed}.",
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(table + "\n")
    data = {
        name: {**asdict(r), "rounds": [asdict(x) for x in r.rounds]} for name, r in results.items()
    }
    data["ratio_median"] = statistics.median(ratios)  # type: ignore[assignment]
    (out / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
