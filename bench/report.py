"""The figures of a `make bench` run, from its measured runs (bench/measure.py): a summary
per path, the tables and targets as markdown, and everything as JSON, written to
bench/results/latest.md and latest.json.

Each table column and each target is a row of data below: to add a figure, add a row.
"""

from __future__ import annotations

import json
import operator
import pathlib
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.durability import shown as shown_durability
from bench.events import side_us
from bench.load import percentile
from bench.measure import (
    BACKLOG_SECONDS,
    BASELINE,
    SERVICE_DATABASES,
    SHOP_OFF,
    SHOP_OFF_SYSTEM,
    SHOP_PG,
    SHOP_PG_SYSTEM,
    SHOP_REST,
    SHOP_TLS,
    SHOP_TLS_SYSTEM,
    MeasuredSystem,
    Results,
    Run,
)
from services.common.postgresql import redacted


@dataclass(frozen=True)
class Column:
    """One column of the table by path: its heading ({rate} is the fixed rate) and how a
    path's summary shows in it."""

    heading: str
    key: str
    shown: str


PATH_COLUMNS = (
    Column("orders/s at saturation", "orders_per_second", "{:.0f}"),
    Column("vs baseline", "ratio", "{:.2f}x"),
    Column("p50 ms at {rate}/s", "p50_ms", "{:.1f}"),
    Column("p99 ms at {rate}/s", "p99_ms", "{:.1f}"),
    Column("CPU µs/order", "cpu_us_per_order", "{:.0f}"),
    Column("vs baseline", "cpu_ratio", "{:.2f}x"),
)


@dataclass(frozen=True)
class Figures:
    """What the targets are checked against."""

    rest: dict[str, float]  # the summary of shopmesh's REST+JWT path
    baseline: dict[str, float]  # the summary of the baseline's path
    postgres: dict[str, float]  # the summary of shopmesh's REST+JWT path on PostgreSQL
    shop: MeasuredSystem
    envoy_us: float
    rate: int
    events: dict[str, float]  # events on against off (`events_figures`), lag and backlog
    tls: dict[str, float]  # mutual TLS against plaintext (`tls_figures`)


@dataclass(frozen=True)
class Target:
    """A target the benchmark was built to meet: `what` holds when the measured value
    compares with the limit as `holds` says. `what` may name {rate} and {limit}; `shown`
    formats {value} and {limit}."""

    what: str
    value: Callable[[Figures], float]
    limit: Callable[[Figures], float]
    holds: Callable[[float, float], bool]
    shown: str


# The targets shopmesh was built to meet against the classic design on this machine.
TARGETS = (
    Target(
        "REST+JWT orders/s >= {limit}x baseline",
        lambda f: f.rest["ratio"],
        lambda f: 1.5,
        operator.ge,
        "{value:.2f}x",
    ),
    Target(
        "on PostgreSQL, REST+JWT orders/s >= {limit}x shopmesh on SQLite's",
        lambda f: f.postgres["vs_sqlite"],
        lambda f: 0.7,
        operator.ge,
        "{value:.2f}x",
    ),
    Target(
        "on PostgreSQL, REST+JWT orders/s >= {limit}x baseline",
        lambda f: f.postgres["ratio"],
        lambda f: 1.5,
        operator.ge,
        "{value:.2f}x",
    ),
    Target(
        "REST+JWT p99 at {rate}/s <= baseline's",
        lambda f: f.rest["p99_ms"],
        lambda f: f.baseline["p99_ms"],
        operator.le,
        "{value:.1f} vs {limit:.1f} ms",
    ),
    Target(
        "CPU per order <= {limit}x baseline",
        lambda f: f.rest["cpu_ratio"],
        lambda f: 0.7,
        operator.le,
        "{value:.2f}x",
    ),
    Target(
        "Envoy CPU per request <= {limit} µs",
        lambda f: f.envoy_us,
        lambda f: 150,
        operator.le,
        "{value:.0f}",
    ),
    Target(
        "events on: producing-side CPU per order <= {limit}x events off",
        lambda f: f.events["producing_ratio"],
        lambda f: 1.15,
        operator.le,
        "{value:.2f}x",
    ),
    Target(
        "events on: orders/s at saturation >= {limit}x events off",
        lambda f: f.events["rate_ratio"],
        lambda f: 0.8,
        operator.ge,
        "{value:.2f}x",
    ),
    Target(
        f"outbox backlog at the end of a {BACKLOG_SECONDS} s saturation round <= its start"
        " + 1 s of events ({limit:.0f})",
        lambda f: f.events["backlog_end"],
        lambda f: f.events["backlog_bound"],
        operator.le,
        "{value:.0f}",
    ),
    Target(
        "mutual TLS: CPU per order <= {limit}x plaintext",
        lambda f: f.tls["cpu_ratio"],
        lambda f: 1.15,
        operator.le,
        "{value:.2f}x",
    ),
    # 400 MB before the events: NATS, the SMTP sink, notification and reporting joined
    # the default stack (the events issue set the new budget).
    Target(
        "whole-system RSS < {limit} MB",
        lambda f: f.shop.peak_rss_mb,
        lambda f: 600,
        operator.lt,
        "{value:.0f}",
    ),
    Target(
        "cold start < {limit} s",
        lambda f: f.shop.cold_start_s,
        lambda f: 10,
        operator.lt,
        "{value:.1f}",
    ),
)


def summarize(saturation: list[Run], paced: list[Run]) -> dict[str, dict[str, float]]:
    """Per path: the medians over the saturation rounds (ratios per round against the
    baseline's round), and the percentiles of the fixed-rate latencies."""
    base_runs = [r for r in saturation if r.path == BASELINE]
    base_cpu = statistics.median(r.cpu_us_per_order for r in base_runs)
    summary = {}
    for name in dict.fromkeys(r.path for r in saturation):
        runs = [r for r in saturation if r.path == name]
        # Percentiles of every round's latencies pooled: a 10 s round at the fixed rate
        # has too few samples for a steady p99 of its own.
        pooled = [x for r in paced if r.path == name for x in r.latencies_ms]
        cpu = statistics.median([r.cpu_us_per_order for r in runs])
        summary[name] = {
            "orders_per_second": statistics.median([r.per_second for r in runs]),
            "ratio": statistics.median(
                [r.per_second / b.per_second for r, b in zip(runs, base_runs, strict=True)]
            ),
            "p50_ms": percentile(pooled, 0.50),
            "p99_ms": percentile(pooled, 0.99),
            "cpu_us_per_order": cpu,
            "cpu_ratio": cpu / base_cpu,
        }
    # PostgreSQL against SQLite, the same path of each shopmesh: per round, as against
    # the baseline.
    pg_runs = [r for r in saturation if r.path == SHOP_PG]
    sqlite_runs = [r for r in saturation if r.path == SHOP_REST]
    if pg_runs:
        summary[SHOP_PG]["vs_sqlite"] = statistics.median(
            r.per_second / s.per_second for r, s in zip(pg_runs, sqlite_runs, strict=True)
        )
    return summary


def events_figures(results: Results) -> dict[str, float]:
    """Events on (shopmesh's REST path) against off (the same path of the system with
    events off), the medians over the saturation rounds: orders/s, and CPU µs per order of
    the producing and the consuming side (bench/events.py); then the lag and backlog."""
    on = [r for r in results.saturation if r.path == SHOP_REST]
    off = [r for r in results.saturation if r.path == SHOP_OFF]

    def median_us(runs: list[Run], *, consuming: bool) -> float:
        return statistics.median(side_us(r.cpu_seconds, r.ok, consuming=consuming) for r in runs)

    figures = {
        "on_per_second": statistics.median(r.per_second for r in on),
        "off_per_second": statistics.median(r.per_second for r in off),
        "rate_ratio": statistics.median(
            a.per_second / b.per_second for a, b in zip(on, off, strict=True)
        ),
        "producing_on_us": median_us(on, consuming=False),
        "consuming_on_us": median_us(on, consuming=True),
        "producing_off_us": median_us(off, consuming=False),
    }
    figures["producing_ratio"] = figures["producing_on_us"] / figures["producing_off_us"]
    figures.update({f"lag_{k}": v for k, v in results.lag.items()})
    figures.update({f"backlog_{k}": v for k, v in results.backlog.items()})
    return figures


def tls_figures(results: Results) -> dict[str, float]:
    """Mutual TLS (every part of a second shopmesh) against plaintext, on the same REST
    path, per saturation round (the rounds interleave, so a round's pair shares the
    machine's state): CPU per order of the whole system and orders/s, medians."""
    plain = [r for r in results.saturation if r.path == SHOP_REST]
    secure = [r for r in results.saturation if r.path == SHOP_TLS]
    pairs = list(zip(secure, plain, strict=True))
    return {
        "tls_cpu_us": statistics.median(r.cpu_us_per_order for r in secure),
        "plain_cpu_us": statistics.median(r.cpu_us_per_order for r in plain),
        "cpu_ratio": statistics.median(t.cpu_us_per_order / p.cpu_us_per_order for t, p in pairs),
        "tls_per_second": statistics.median(r.per_second for r in secure),
        "plain_per_second": statistics.median(r.per_second for r in plain),
        "rate_ratio": statistics.median(t.per_second / p.per_second for t, p in pairs),
    }


def tls_lines(f: dict[str, float]) -> list[str]:
    return [
        "",
        "| transport | orders/s at saturation | CPU µs/order (whole system) |",
        "|---|---|---|",
        f"| plaintext | {f['plain_per_second']:.0f} | {f['plain_cpu_us']:.0f} |",
        f"| mutual TLS | {f['tls_per_second']:.0f} | {f['tls_cpu_us']:.0f} |",
        "",
        f"Mutual TLS against plaintext (REST+JWT via Envoy, per-round medians): CPU per order"
        f" {f['cpu_ratio']:.2f}x, orders/s {f['rate_ratio']:.2f}x. Under mutual TLS every hop"
        " is TLS: Envoy to each service, the saga's calls through the internal listener, the"
        " services to NATS and to Consul.",
    ]


def events_lines(f: dict[str, float], rate: int) -> list[str]:
    return [
        "",
        "| events | orders/s at saturation | producing side CPU µs/order"
        " | consuming side CPU µs/order | whole system CPU µs/order |",
        "|---|---|---|---|---|",
        f"| on | {f['on_per_second']:.0f} | {f['producing_on_us']:.0f}"
        f" | {f['consuming_on_us']:.0f} | {f['producing_on_us'] + f['consuming_on_us']:.0f} |",
        f"| off | {f['off_per_second']:.0f} | {f['producing_off_us']:.0f} | 0"
        f" | {f['producing_off_us']:.0f} |",
        "",
        "Producing side: Envoy, order, inventory and payment (with their outbox relays), Consul"
        " and the control plane; consuming side: NATS, notification, reporting and the SMTP"
        " sink (REST+JWT via Envoy, medians over the saturation rounds).",
        f"Event lag from commit to the read model at {rate}/s: p50 {f['lag_p50_ms']:.0f} ms,"
        f" p99 {f['lag_p99_ms']:.0f} ms, max {f['lag_max_ms']:.0f} ms over"
        f" {f['lag_events']:.0f} events (the outbox row's commit time to the reporting"
        " transaction that applied it; one clock).",
        f"Outbox backlog over a {BACKLOG_SECONDS} s saturation round: {f['backlog_start']:.0f}"
        f" at the start, peak {f['backlog_peak']:.0f}, {f['backlog_end']:.0f} at the end"
        f" ({f['backlog_events_per_second']:.0f} events/s committed).",
    ]


def failed_requests(results: Results) -> int:
    backlog_run = [results.backlog_run] if results.backlog_run is not None else []
    return (
        sum(r.failed for r in results.saturation + results.paced + backlog_run)
        + sum(int(c["failed"]) for c in results.wrk.values())
        + int(results.envoy_get["failed"])
    )


def cpu_by_process(results: Results, shop: MeasuredSystem, path: str) -> dict[str, float]:
    """A system's CPU µs per order on `path` by process, the median over the rounds."""
    rest_runs = [r for r in results.saturation if r.path == path]
    return {
        part: statistics.median(r.cpu_seconds[part] / max(r.ok, 1) * 1e6 for r in rest_runs)
        for part in shop.processes
    }


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def render(
    results: Results,
    summary: dict[str, dict[str, float]],
    systems: dict[str, MeasuredSystem],
    splits: dict[str, dict[str, float]],
    failed: int,
) -> str:
    shop = systems["shopmesh"]
    headings = " | ".join(c.heading.format(rate=results.rate) for c in PATH_COLUMNS)
    rows = [
        f"| {name} | " + " | ".join(c.shown.format(s[c.key]) for c in PATH_COLUMNS) + " |"
        for name, s in summary.items()
    ]
    wrk_shop = results.wrk[SHOP_REST]["per_second"]
    wrk_base = results.wrk[BASELINE]["per_second"]
    figures = Figures(
        summary[SHOP_REST],
        summary[BASELINE],
        summary[SHOP_PG],
        shop,
        results.envoy_get["cpu_us_per_request"],
        results.rate,
        events_figures(results),
        tls_figures(results),
    )
    targets = []
    for target in TARGETS:
        value, limit = target.value(figures), target.limit(figures)
        shown = target.shown.format(value=value, limit=limit)
        what = target.what.format(rate=results.rate, limit=limit)
        targets.append(f"- {what}: {shown} {_mark(target.holds(value, limit))}")
    lines = [
        f"| path | {headings} |",
        "|---" * (len(PATH_COLUMNS) + 1) + "|",
        *rows,
        "",
        "| system | peak RSS MB (all processes; a server's PSS) | PSS MB at the end"
        " | cold start to healthy s | durability |",
        "|---|---|---|---|---|",
        *(
            f"| {s.name} | {s.peak_rss_mb:.0f} | {s.pss_mb:.0f} | {s.cold_start_s:.1f}"
            f" | {shown_durability(s.durability)} |"
            for s in systems.values()
        ),
        "",
        *(
            f"{system} CPU per REST order by process (µs): "
            + ", ".join(f"{part} {us:.0f}" for part, us in split.items())
            + "."
            for system, split in splits.items()
        ),
        *pg_lines(results.pg_per_order),
        *events_lines(figures.events, results.rate),
        *tls_lines(figures.tls),
        "",
        f"Envoy CPU per REST GET with JWT + transcoder: {figures.envoy_us:.0f} µs.",
        f"wrk cross-check (REST orders/s): shopmesh {wrk_shop:.0f},"
        f" baseline {wrk_base:.0f} ({wrk_shop / wrk_base:.2f}x).",
        f"Failed requests in measured runs: {failed}.",
        "",
        "Targets:",
        *targets,
    ]
    return "\n".join(lines)


def pg_lines(per_order: dict[str, float]) -> list[str]:
    """What an order cost the PostgreSQL server, per service database, if measured."""
    if not per_order:
        return []
    parts = []
    for db in SERVICE_DATABASES:
        if f"{db}.xact_commit" not in per_order:
            continue
        written = sum(per_order[f"{db}.tup_{kind}"] for kind in ("inserted", "updated", "deleted"))
        parts.append(
            f"{db} {per_order[f'{db}.xact_commit']:.1f} commits"
            f" ({per_order[f'{db}.xact_rollback']:.2f} rolled back),"
            f" {written:.1f} rows written, {per_order[f'{db}.tup_fetched']:.1f} fetched by index"
            f" ({per_order[f'{db}.tup_returned']:.0f} rows and index entries read)"
        )
    return [
        f"PostgreSQL per order (over {per_order['orders']:.0f} orders): " + "; ".join(parts) + ";"
        f" WAL {per_order['wal.wal_records']:.1f} records, {per_order['wal.wal_write']:.2f}"
        f" writes, {per_order['wal.wal_sync']:.2f} fsyncs.",
    ]


def _without_latencies(run: Run) -> dict[str, Any]:
    return {k: v for k, v in asdict(run).items() if k != "latencies_ms"}


def write(results: Results, systems: dict[str, MeasuredSystem], out: pathlib.Path) -> int:
    """Writes latest.md and latest.json to `out`, prints the markdown; 1 if any measured
    request failed."""
    summary = summarize(results.saturation, results.paced)
    splits = {
        "shopmesh": cpu_by_process(results, systems["shopmesh"], SHOP_REST),
        SHOP_OFF_SYSTEM: cpu_by_process(results, systems[SHOP_OFF_SYSTEM], SHOP_OFF),
        SHOP_TLS_SYSTEM: cpu_by_process(results, systems[SHOP_TLS_SYSTEM], SHOP_TLS),
        SHOP_PG_SYSTEM: cpu_by_process(results, systems[SHOP_PG_SYSTEM], SHOP_PG),
    }
    failed = failed_requests(results)
    table = render(results, summary, systems, splits, failed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(table + "\n")
    data = {
        "summary": summary,
        "systems": {
            # A DSN's password stays out of the results.
            name: {
                **asdict(s),
                "order_db": redacted(str(s.order_db)),
                "trees": sorted(s.trees),
                "databases": {n: str(at) for n, at in s.databases.items()},
            }
            for name, s in systems.items()
        },
        "rate": results.rate,
        "saturation": [_without_latencies(r) for r in results.saturation],
        "paced": [_without_latencies(r) for r in results.paced],
        "wrk": results.wrk,
        "envoy_get": results.envoy_get,
        "cpu_us_per_order_by_process": splits,
        "pg_per_order": results.pg_per_order,
        "events": events_figures(results),
        "tls": tls_figures(results),
        "backlog_run": _without_latencies(results.backlog_run) if results.backlog_run else None,
        "failed": failed,
    }
    (out / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    print(table)
    return 1 if failed else 0
