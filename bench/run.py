"""`make bench`: shopmesh against the classic FastAPI design (bench/baseline), side by side.

Seven paths get the same load from the same driver (bench/load.py; every request a new
request id, so each runs a real order saga): shopmesh REST+JWT via Envoy (events on,
events off, and every part under mutual TLS), shopmesh gRPC
via Envoy (JWT), shopmesh gRPC straight to the order service, shopmesh REST+JWT via Envoy
with every store on PostgreSQL (a second shopmesh, its own cluster, a role and database
per service), and the baseline's REST. Rounds interleave (A B C D E A B C D E ...) so
machine noise hits every path alike; only one path has load at a time, the other systems
idle meanwhile.

Measured (bench/measure.py):
- orders per second at saturation (closed loop), and the median of the per-round ratios
  against the baseline;
- p50 / p99 latency at a fixed offered rate (open loop at half the baseline's saturation
  rate, latency from each request's scheduled time);
- CPU time per order summed over every process of the system, from /proc, and split by
  process (PostgreSQL's: the postmaster and every process it forked, exited ones too);
- on PostgreSQL, its transactions, rows and WAL fsyncs per order (pg_stat_database,
  pg_stat_wal);
- each system's durability, read from it (bench/durability.py);
- Envoy's own CPU per request (REST GET with JWT + transcoder, driven by wrk);
- the sum of the processes' peak RSS, and cold start to healthy;
- wrk (bench/orders.lua) as a cross-check of the REST saturation figures.
A run counts only if every order was CONFIRMED; negative controls (a bad token on each
transport) prove that check can fail. Results go to bench/results/ as JSON and markdown
(bench/report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import shutil
import sys
import time
from collections.abc import Callable

from bench import durability, report
from bench.baseline.run import Baseline
from bench.baseline.run import start as start_baseline
from bench.measure import (
    BACKLOG_SECONDS,
    BASELINE,
    POSTGRES,
    SEED_ACCOUNTS,
    SEED_PRODUCTS,
    SHOP_OFF,
    SHOP_OFF_SYSTEM,
    SHOP_PG,
    SHOP_PG_SYSTEM,
    SHOP_REST,
    SHOP_TLS,
    SHOP_TLS_SYSTEM,
    LoadPath,
    MeasuredSystem,
    benchmark,
    memory_mb,
    pss_mb,
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
    parser.add_argument(
        "--backlog-seconds",
        type=int,
        default=BACKLOG_SECONDS,
        help="the saturation round the outbox backlog is watched over",
    )
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "bench" / "results")
    parser.add_argument("--workdir", type=pathlib.Path, default=REPO / "var" / "bench")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds < 1 or args.connections < 1:
        parser.error("--rounds, --seconds and --connections must be positive")
    return args


def load_paths(shops: dict[str, System], base: Baseline, token: str) -> list[LoadPath]:
    """The seven paths, shopmesh's on SQLite first (events on, then off, then under mutual
    TLS) and the baseline's last (the tables show them in this order). `shops`: each
    shopmesh system by its name (bench/measure.py's *_SYSTEM)."""
    shop, shop_off = shops["shopmesh"], shops[SHOP_OFF_SYSTEM]
    shop_tls, shop_pg = shops[SHOP_TLS_SYSTEM], shops[SHOP_PG_SYSTEM]
    via_envoy = ("--token", token)
    return [
        LoadPath(SHOP_REST, "shopmesh", "rest", f"http://{shop.public_target}", via_envoy),
        LoadPath(
            SHOP_OFF,
            SHOP_OFF_SYSTEM,
            "rest",
            f"http://{shop_off.public_target}",
            via_envoy,
            short="shopmesh off rest",
        ),
        LoadPath(
            SHOP_TLS,
            SHOP_TLS_SYSTEM,
            "rest",
            f"http://{shop_tls.public_target}",
            via_envoy,
            short="shopmesh tls rest",
        ),
        LoadPath("shopmesh gRPC via Envoy", "shopmesh", "grpc", shop.public_target, via_envoy),
        LoadPath(
            "shopmesh gRPC direct to order",
            "shopmesh",
            "grpc",
            f"127.0.0.1:{shop.order[0].port}",
            ("--user", "bench"),
        ),
        LoadPath(
            SHOP_PG,
            SHOP_PG_SYSTEM,
            "rest",
            f"http://{shop_pg.public_target}",
            via_envoy,
            short="shopmesh pg rest",
        ),
        LoadPath(BASELINE, "baseline", "rest", base.url("order"), via_envoy),
    ]


def measured(name: str, shop: System, cold_start_s: float) -> MeasuredSystem:
    """A shopmesh system as the benchmark measures it; on PostgreSQL, its server a part."""
    processes = {
        "envoy": [shop.envoy.pid],
        "order": [s.pid for s in shop.order],
        "inventory": [s.pid for s in shop.inventory],
        "payment": [s.pid for s in shop.payment],
        "consul+controlplane": [shop.consul.pid, shop.controlplane.pid],
    }
    # The consuming side (bench/events.py CONSUMING), with events on.
    consuming = {
        "nats": [shop.broker.pid] if shop.broker is not None else [],
        "notification": [s.pid for s in shop.notification],
        "reporting": [s.pid for s in shop.reporting],
        "smtp sink": [shop.smtp_sink.pid] if shop.smtp_sink is not None else [],
    }
    processes.update({part: pids for part, pids in consuming.items() if pids})
    if shop.cluster is None:
        order_db = shop.order[0].workdir / "order.db"
        files = {n: at for n, at in shop.databases.items() if isinstance(at, pathlib.Path)}
        return MeasuredSystem(
            name,
            cold_start_s,
            processes,
            order_db,
            durability=durability.sqlite(order_db),
            databases=files,
        )
    return MeasuredSystem(
        name,
        cold_start_s,
        {**processes, POSTGRES: [shop.cluster.process.pid]},
        shop.cluster.dsn("order"),
        trees=frozenset({POSTGRES}),
        durability=durability.postgres(shop.cluster.admin),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # A fresh start every run: the same databases, stock and Consul state for each.
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    seed = write_seed(args.workdir / "seed.json", SEED_PRODUCTS, SEED_ACCOUNTS)
    keys = args.workdir / "jwt"
    # Every system started is stopped at the end, the last started first.
    with contextlib.ExitStack() as running:

        def started(what: str, start: Callable[[], System]) -> tuple[System, float]:
            print(f"starting {what}...", flush=True)
            began = time.monotonic()
            system = start()
            running.callback(system.stop)
            return system, time.monotonic() - began

        shop, took = started(
            "shopmesh (NATS, Consul, control plane, services, Envoy)",
            lambda: start_system(shop_settings(args.workdir / "shopmesh", seed, keys_dir=keys)),
        )
        shop_system = measured("shopmesh", shop, took)
        shop_off, took = started(
            "shopmesh with events off (no NATS, SMTP sink, notification or reporting)",
            lambda: start_system(
                shop_settings(args.workdir / "shopmesh-off", seed, keys_dir=keys, events=False)
            ),
        )
        off_system = measured(SHOP_OFF_SYSTEM, shop_off, took)
        shop_tls, took = started(
            "shopmesh under mutual TLS (every part: Envoy, services, Consul, NATS)",
            lambda: start_system(
                shop_settings(args.workdir / "shopmesh-tls", seed, keys_dir=keys, mutual_tls=True)
            ),
        )
        tls_system = measured(SHOP_TLS_SYSTEM, shop_tls, took)
        shop_pg, took = started(
            "shopmesh on PostgreSQL (its cluster first)",
            lambda: start_system(
                shop_settings(args.workdir / "shopmesh-pg", seed, postgres=True, keys_dir=keys)
            ),
        )
        pg_system = measured(SHOP_PG_SYSTEM, shop_pg, took)
        assert shop_pg.cluster is not None
        print(f"PostgreSQL: {durability.shown(pg_system.durability)}", flush=True)
        print("starting the baseline (FastAPI + httpx)...", flush=True)
        began = time.monotonic()
        base = start_baseline(args.workdir / "baseline", seed, shop.keys.jwks)
        running.callback(base.stop)
        base_db = args.workdir / "baseline" / "baseline-order.db"
        base_system = MeasuredSystem(
            "baseline",
            time.monotonic() - began,
            {name: [p.pid] for name, p in base.processes.items()},
            base_db,
            durability=durability.sqlite(base_db),
        )
        # One key pair for every shopmesh system's gateway and the baseline: the same
        # token is good on every path.
        token = tokens.issue("bench", directory=shop.keys.private_pem.parent)
        systems = {
            "shopmesh": shop_system,
            SHOP_OFF_SYSTEM: off_system,
            SHOP_TLS_SYSTEM: tls_system,
            SHOP_PG_SYSTEM: pg_system,
            "baseline": base_system,
        }
        results = benchmark(
            load_paths(
                {
                    "shopmesh": shop,
                    SHOP_OFF_SYSTEM: shop_off,
                    SHOP_TLS_SYSTEM: shop_tls,
                    SHOP_PG_SYSTEM: shop_pg,
                },
                base,
                token,
            ),
            systems,
            token,
            f"http://{shop.public_target}",
            rounds=args.rounds,
            seconds=args.seconds,
            connections=args.connections,
            pg_admin=shop_pg.cluster.admin,
            backlog_seconds=args.backlog_seconds,
        )
        for system in systems.values():
            system.peak_rss_mb = memory_mb(system)
            system.pss_mb = pss_mb(system)
    return report.write(results, systems, args.out)


if __name__ == "__main__":
    sys.exit(main())
