"""What `make bench` computes of the events (bench/events.py, bench/report.py): the CPU
split into the producing and the consuming side, events on against off (and mutual TLS
against plaintext), the lag from an
outbox row's commit to its applying, and the backlog bound. On SQLite files made by the
services' own migrations; starts no process."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest

from bench import events
from bench.measure import SHOP_OFF, SHOP_REST, SHOP_TLS, Results, Run
from bench.report import events_figures, tls_figures
from services.inventory.store import InventoryStore
from services.order.store import OrderStore
from services.payment.store import PaymentStore
from services.reporting.store import ReportingStore


def run(path: str, ok: int, cpu: dict[str, float]) -> Run:
    return Run(path, ok, ok, 1.0, 0.0, 0.0, [], cpu, {}, ok)


def test_the_consuming_side_is_nats_the_consumers_and_the_sink() -> None:
    cpu = {"envoy": 1.0, "order": 2.0, "nats": 0.5, "reporting": 0.25, "smtp sink": 0.25}
    assert events.side_us(cpu, 1000, consuming=False) == pytest.approx(3000)
    assert events.side_us(cpu, 1000, consuming=True) == pytest.approx(1000)


def test_events_on_against_off_per_round() -> None:
    results = Results(
        saturation=[
            run(SHOP_REST, 100, {"order": 1.0, "nats": 0.5}),
            run(SHOP_OFF, 200, {"order": 1.6}),
        ],
        paced=[],
        rate=10,
        wrk={},
        envoy_get={},
        lag={"p50_ms": 2.0},
        backlog={"end": 5.0},
    )
    figures = events_figures(results)
    assert figures["rate_ratio"] == pytest.approx(0.5)
    assert figures["producing_on_us"] == pytest.approx(10_000)
    assert figures["producing_off_us"] == pytest.approx(8_000)
    assert figures["producing_ratio"] == pytest.approx(1.25)
    assert figures["consuming_on_us"] == pytest.approx(5_000)
    assert (figures["lag_p50_ms"], figures["backlog_end"]) == (2.0, 5.0)


def test_mutual_tls_against_plaintext_per_round() -> None:
    """The ratio is of each round's pair (the rounds interleave), then the median."""
    results = Results(
        saturation=[
            run(SHOP_REST, 100, {"envoy": 1.0}),  # 10 ms per order
            run(SHOP_TLS, 80, {"envoy": 1.0}),  # 12.5 ms: 1.25x
            run(SHOP_REST, 100, {"envoy": 2.0}),  # a slow round: 20 ms
            run(SHOP_TLS, 90, {"envoy": 2.0}),  # 22.2 ms: 1.11x
            run(SHOP_REST, 100, {"envoy": 1.0}),
            run(SHOP_TLS, 100, {"envoy": 1.1}),  # 1.10x
        ],
        paced=[],
        rate=10,
        wrk={},
        envoy_get={},
        lag={},
        backlog={},
    )
    figures = tls_figures(results)
    assert figures["cpu_ratio"] == pytest.approx(2.0 / 1.8)
    assert figures["rate_ratio"] == pytest.approx(0.9)
    assert (figures["plain_cpu_us"], figures["tls_cpu_us"]) == pytest.approx((10_000, 12_500))


@pytest.fixture
def databases(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    stores = {
        "order": OrderStore,
        "inventory": InventoryStore,
        "payment": PaymentStore,
        "reporting": ReportingStore,
    }
    paths = {name: tmp_path / f"{name}.db" for name in stores}
    for name, store in stores.items():
        store(paths[name]).close()
    return paths


def outbox_row(path: pathlib.Path, event_id: str, created_at: float, sent: bool) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO outbox (event_id, aggregate_id, sequence, subject, envelope,"
            " created_at, sent_at) VALUES (?, ?, 1, 's', x'00', ?, ?)",
            (event_id, event_id, created_at, created_at if sent else None),
        )


def applied(path: pathlib.Path, event_id: str, at: float) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO applied_events (event_id, stream_sequence, type, applied_at)"
            " VALUES (?, 1, 't', ?)",
            (event_id, at),
        )


def test_the_lag_is_commit_to_applied_for_the_windows_events(
    databases: dict[str, pathlib.Path],
) -> None:
    outbox_row(databases["order"], "o1", 100.0, sent=True)
    outbox_row(databases["payment"], "p1", 101.0, sent=True)
    outbox_row(databases["inventory"], "i-outside", 500.0, sent=True)  # not in the window
    applied(databases["reporting"], "o1", 100.004)
    applied(databases["reporting"], "p1", 101.010)
    lags = events.event_lags(databases, [(99.0, 102.0)], catch_up_seconds=1)
    assert sorted(round(x, 3) for x in lags) == [0.004, 0.010]
    assert events.backlog(databases) == 0


def test_an_event_the_read_model_never_applies_fails_the_measurement(
    databases: dict[str, pathlib.Path],
) -> None:
    outbox_row(databases["order"], "o1", 100.0, sent=False)
    with pytest.raises(SystemExit, match="1 of 1 events not in the read model"):
        events.event_lags(databases, [(99.0, 102.0)], catch_up_seconds=0.3)
    assert events.backlog(databases) == 1
