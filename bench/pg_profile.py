"""`make profile-pg`: what an order costs shopmesh on PostgreSQL, statement by statement.

Starts shopmesh with every store on a PostgreSQL cluster of its own (as `make bench`'s
PostgreSQL path runs it), warms it up, then:

1. statements: turns on the server's `log_statement = all` for one run of orders (REST via
   Envoy, `--connections` at once), and counts from its log every statement each service's
   database ran, per order, by text (asyncpg runs each statement as one round trip:
   BEGIN, each statement, COMMIT; a round trip is one statement here), and by the
   transactions' shape (a read in autocommit is one statement);
2. CPU: with logging off again, another run of orders, and the CPU per order of each part
   (the services, Envoy, the PostgreSQL server's whole process tree) and the server's
   counters per order (bench/measure.py's).

No pg_stat_statements: it needs the server started with it preloaded, and the log counts
every execution the same. For where each service's own time goes, `make profile
POSTGRES=1` samples them with py-spy.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench.measure import (
    POSTGRES,
    SEED_ACCOUNTS,
    SEED_PRODUCTS,
    SERVICE_DATABASES,
    SHOP_PG,
    SHOP_PG_SYSTEM,
    LoadPath,
    drive,
    measure,
    pg_counters,
    shop_settings,
)
from bench.run import measured
from shopmesh import tokens
from shopmesh.seed import write_seed
from shopmesh.system import start
from shopmesh.tools import REPO

PREFIX = "PGPROFILE"
"""log_line_prefix's literal part, to find our lines among the server's others."""
# `PGPROFILE order|` then `LOG:  statement: BEGIN` (simple protocol) or
# `LOG:  execute <unnamed>: SELECT ...` / `LOG:  execute __asyncpg_stmt_3__: ...` (extended).
LINE = re.compile(rf"^{PREFIX} (\w*)\|.*?LOG:  (?:statement|execute [^:]*): (.*)$")


def count_statements(log: str) -> dict[str, collections.Counter[str]]:
    """Per database, how often each statement's text ran (parameters are $n already). A
    statement of several lines continues on lines that begin with a tab."""
    counted: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    current: tuple[str, list[str]] | None = None
    for line in [*log.splitlines(), ""]:
        if current is not None and line.startswith("\t"):
            current[1].append(line)
            continue
        if current is not None:
            counted[current[0]][" ".join(" ".join(current[1]).split())] += 1
            current = None
        if match := LINE.match(line):
            current = (match.group(1), [match.group(2)])
    return counted


def set_logging(admin: Callable[[], psycopg.Connection[Any]], on: bool) -> None:
    """`log_statement = all` (with our line prefix) on or off, without a restart."""
    with admin() as conn:
        if on:
            conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            conn.execute(f"ALTER SYSTEM SET log_line_prefix = '{PREFIX} %d|'")
        else:
            conn.execute("ALTER SYSTEM RESET log_statement")
            conn.execute("ALTER SYSTEM RESET log_line_prefix")
        conn.execute("SELECT pg_reload_conf()")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pg_profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--top", type=int, default=12, help="statements shown per database")
    parser.add_argument("--workdir", type=pathlib.Path, default=REPO / "var" / "pg-profile")
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    seed = write_seed(args.workdir / "seed.json", SEED_PRODUCTS, SEED_ACCOUNTS)
    print("starting shopmesh on PostgreSQL...", flush=True)
    began = time.monotonic()
    shop = start(shop_settings(args.workdir / "shopmesh", seed, postgres=True))
    try:
        assert shop.cluster is not None
        cluster = shop.cluster
        system = measured(SHOP_PG_SYSTEM, shop, time.monotonic() - began)
        token = tokens.issue("bench", directory=shop.keys.private_pem.parent)
        rest = LoadPath(
            SHOP_PG,
            SHOP_PG_SYSTEM,
            "rest",
            f"http://{shop.public_target}",
            ("--token", token),
            short="pgprof",
        )
        stamp = time.time_ns()
        drive(rest, f"warm-{stamp}", 3, args.connections)

        print(f"counting statements for {args.seconds} s of orders...", flush=True)
        set_logging(cluster.admin, on=True)
        start_at = cluster.log_path.stat().st_size
        counted_run = measure(rest, system, f"s-{stamp}", args.seconds, args.connections)
        set_logging(cluster.admin, on=False)
        with cluster.log_path.open() as log:
            log.seek(start_at)
            statements = count_statements(log.read())
        orders = max(counted_run.new_orders, 1)

        print(f"measuring CPU for {args.seconds} s of orders (logging off)...", flush=True)
        before = pg_counters(cluster.admin)
        run = measure(rest, system, f"c-{stamp}", args.seconds, args.connections)
        # Backends hand in their counts at most once a second, idle ones after 10 s.
        time.sleep(11)
        after = pg_counters(cluster.admin)
    finally:
        shop.stop()

    print(f"\n== statements per order ({orders} orders, {args.connections} at once)")
    for db in SERVICE_DATABASES:
        counter = statements.get(db, collections.Counter())
        total = sum(counter.values())
        print(f"\n{db}: {total / orders:.1f} statements (round trips) per order")
        for text, n in counter.most_common(args.top):
            print(f"  {n / orders:5.2f}  {text[:150]}")
    print(f"\n== CPU per order ({run.ok} orders, {run.per_second:.0f}/s), µs")
    for part, seconds in run.cpu_seconds.items():
        print(f"  {part:22} {seconds / max(run.ok, 1) * 1e6:7.0f}")
    print(f"  {'all':22} {run.cpu_us_per_order:7.0f}")
    services = sum(run.cpu_seconds[p] for p in ("order", "inventory", "payment"))
    print(
        f"  the server / the three services: {run.cpu_seconds[POSTGRES] / max(services, 1e-9):.2f}"
    )
    print("\n== the server's counters per order")
    for key in after:
        print(f"  {key:24} {(after[key] - before.get(key, 0.0)) / max(run.new_orders, 1):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
