"""`make bench`: shopmesh against the classic FastAPI design (bench/baseline), side by side.

Four paths get the same load from the same driver (bench/load.py; every request a new
request id, so each runs a real order saga): shopmesh REST+JWT via Envoy, shopmesh gRPC
via Envoy (JWT), shopmesh gRPC straight to the order service, and the baseline's REST.
Rounds interleave (A B C D A B C D ...) so machine noise hits every path alike.

Measured (bench/measure.py):
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
transport) prove that check can fail. Results go to bench/results/ as JSON and markdown
(bench/report.py).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import time

from bench import report
from bench.baseline.run import Baseline
from bench.baseline.run import start as start_baseline
from bench.measure import (
    BASELINE,
    SEED_ACCOUNTS,
    SEED_PRODUCTS,
    SHOP_REST,
    LoadPath,
    MeasuredSystem,
    benchmark,
    peak_rss_mb,
    shop_settings,
)
from shopmesh import tokens
from shopmesh.seed import write_seed
from shopmesh.system import System
from shopmesh.system import start as start_system
from shopmesh.tools import REPO


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


def load_paths(shop: System, base: Baseline, token: str) -> list[LoadPath]:
    """The four paths, shopmesh's REST first and the baseline's last (bench/measure.py's
    benchmark reads them in this order)."""
    via_envoy = ("--token", token)
    return [
        LoadPath(SHOP_REST, "shopmesh", "rest", f"http://{shop.public_target}", via_envoy),
        LoadPath("shopmesh gRPC via Envoy", "shopmesh", "grpc", shop.public_target, via_envoy),
        LoadPath(
            "shopmesh gRPC direct to order",
            "shopmesh",
            "grpc",
            f"127.0.0.1:{shop.order[0].port}",
            ("--user", "bench"),
        ),
        LoadPath(BASELINE, "baseline", "rest", base.url("order"), via_envoy),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # A fresh start every run: the same databases, stock and Consul state for each.
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    seed = write_seed(args.workdir / "seed.json", SEED_PRODUCTS, SEED_ACCOUNTS)

    print("starting shopmesh (Consul, control plane, services, Envoy)...", flush=True)
    started = time.monotonic()
    shop = start_system(shop_settings(args.workdir / "shopmesh", seed))
    try:
        shop_system = MeasuredSystem(
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
            base_system = MeasuredSystem(
                "baseline",
                time.monotonic() - started,
                {name: [p.pid] for name, p in base.processes.items()},
                args.workdir / "baseline" / "baseline-order.db",
            )
            token = tokens.issue("bench", directory=shop.keys.private_pem.parent)
            systems = {"shopmesh": shop_system, "baseline": base_system}
            results = benchmark(
                load_paths(shop, base, token),
                systems,
                token,
                f"http://{shop.public_target}",
                rounds=args.rounds,
                seconds=args.seconds,
                connections=args.connections,
            )
            for system in systems.values():
                system.peak_rss_mb = peak_rss_mb(system.pids())
        finally:
            base.stop()
    finally:
        shop.stop()
    return report.write(results, systems, args.out)


if __name__ == "__main__":
    sys.exit(main())
