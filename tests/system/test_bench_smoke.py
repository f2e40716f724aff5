"""`make bench` in miniature: the five systems (shopmesh on SQLite with events on and
off and under mutual TLS, shopmesh on PostgreSQL, the baseline) start, every path
answers real orders (each a new order, CONFIRMED) with no failed request, the events'
figures (lag, backlog, the split of CPU) and mutual TLS's cost are measured, and the
results are written. Speed targets belong to `make bench`."""

from __future__ import annotations

import json
import pathlib
import sys

from tests.helpers import run_command
from tests.postgres_harness import postgres_workdir


def run_bench(out: pathlib.Path, workdir: pathlib.Path) -> None:
    run_command(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--connections",
            "4",
            "--out",
            str(out),
            "--workdir",
            str(workdir),
            "--backlog-seconds",
            "2",
        ],
        timeout=300,
    )


def test_the_benchmark_runs_and_every_system_answers(tmp_path: pathlib.Path) -> None:
    with postgres_workdir() as workdir:  # one the PostgreSQL server's OS user can reach
        run_bench(tmp_path / "results", workdir / "bench")
    results = json.loads((tmp_path / "results" / "latest.json").read_text())
    paths = [
        "shopmesh REST+JWT via Envoy",
        "shopmesh REST+JWT via Envoy, events off",
        "shopmesh REST+JWT via Envoy, mutual TLS",
        "shopmesh gRPC via Envoy",
        "shopmesh gRPC direct to order",
        "shopmesh REST+JWT via Envoy, on PostgreSQL",
        "baseline REST (FastAPI)",
    ]
    for runs in (results["saturation"], results["paced"]):
        assert [r["path"] for r in runs] == paths
        for run in runs:
            assert run["ok"] > 0 and run["ok"] == run["requests"] == run["new_orders"], run
    assert results["failed"] == 0
    # Each system's durability is read from it, and PostgreSQL's commits are fsync'd.
    pg = results["systems"]["shopmesh on PostgreSQL"]["durability"]
    assert pg["fsync"] == "on" and pg["synchronous_commit"] == "on", pg
    assert results["systems"]["shopmesh"]["durability"]["journal_mode"] == "wal"
    assert results["pg_per_order"]["order.xact_commit"] >= 1, results["pg_per_order"]
    assert "postgres" in results["cpu_us_per_order_by_process"]["shopmesh on PostgreSQL"]
    # The events: every event of the paced rounds reached the read model; with events
    # off, no consumer's CPU; the backlog round ran.
    events = results["events"]
    assert events["lag_events"] > 0 and events["lag_p50_ms"] > 0, events
    assert events["consuming_on_us"] > 0 and events["producing_off_us"] > 0, events
    assert "nats" not in results["cpu_us_per_order_by_process"]["shopmesh, events off"]
    assert results["backlog_run"]["ok"] > 0 and events["backlog_end"] >= 0, events
    for system in ("shopmesh", "shopmesh, events off", "shopmesh, mutual TLS"):
        assert results["systems"][system]["pss_mb"] > 0
    assert results["tls"]["tls_cpu_us"] > 0 and results["tls"]["cpu_ratio"] > 0, results["tls"]
    table = (tmp_path / "results" / "latest.md").read_text()
    for path in paths:
        assert f"| {path} |" in table
