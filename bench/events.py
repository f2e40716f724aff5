"""What the events cost and how far behind they run (`make bench`): the CPU per order split
into the producing side (Envoy, the services with their outbox relays, Consul and the
control plane) and the consuming side (NATS, notification, reporting, the SMTP sink);
each event's lag from its commit to the read model's update; the outbox backlog over a
saturation round.

Times on both ends come from one machine's wall clock (SQLite's `now` is the host's): an
outbox row's `created_at` is its transaction's time, applied_events' `applied_at` the time
of the reporting transaction that applied it (its commit follows within milliseconds).
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bench.load import percentile

CONSUMING = ("nats", "notification", "reporting", "smtp sink")
"""The parts of a system that consume events; every other part produces them (the relays
run inside the services)."""
PRODUCERS = ("order", "inventory", "payment")
"""The services with an outbox."""
CATCH_UP_SECONDS = 60.0
"""How long the lag measurement waits for the read model to apply a window's events."""


def side_us(cpu_seconds: dict[str, float], orders: int, *, consuming: bool) -> float:
    """One run's CPU µs per order of the consuming side's parts, or of the producing
    side's (all the others)."""
    parts = [p for p in cpu_seconds if (p in CONSUMING) == consuming]
    return sum(cpu_seconds[p] for p in parts) / max(orders, 1) * 1e6


@contextlib.contextmanager
def _read(path: pathlib.Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        yield conn
    finally:
        conn.close()


def backlog(databases: dict[str, pathlib.Path]) -> int:
    """Events in the producers' outboxes not sent yet."""
    total = 0
    for name in PRODUCERS:
        with _read(databases[name]) as conn:
            total += conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
    return int(total)


def events_between(
    databases: dict[str, pathlib.Path], start: float, end: float
) -> dict[str, float]:
    """Every producer's events committed in [start, end]: event id -> commit time."""
    found: dict[str, float] = {}
    for name in PRODUCERS:
        with _read(databases[name]) as conn:
            found.update(
                conn.execute(
                    "SELECT event_id, created_at FROM outbox WHERE created_at BETWEEN ? AND ?",
                    (start, end),
                ).fetchall()
            )
    return found


def event_lags(
    databases: dict[str, pathlib.Path],
    windows: Iterable[tuple[float, float]],
    catch_up_seconds: float = CATCH_UP_SECONDS,
) -> list[float]:
    """Each event committed in one of `windows`: seconds from its commit to the read
    model's applying it; waits (bounded) until the reporting service applied them all.
    Raises if it does not: a lag that cannot be measured is a failure, not a zero."""
    committed: dict[str, float] = {}
    for start, end in windows:
        committed.update(events_between(databases, start, end))
    if not committed:
        raise SystemExit("no event was committed in the measured windows: are events on?")
    deadline = time.monotonic() + catch_up_seconds
    while True:
        with _read(databases["reporting"]) as conn:
            applied = dict(
                conn.execute(
                    "SELECT event_id, applied_at FROM applied_events WHERE applied_at IS NOT NULL"
                ).fetchall()
            )
        missing = committed.keys() - applied.keys()
        if not missing:
            return [applied[e] - at for e, at in committed.items()]
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{len(missing)} of {len(committed)} events not in the read model after"
                f" {catch_up_seconds:g} s"
            )
        time.sleep(0.2)


@dataclass
class BacklogSampler:
    """The outbox backlog sampled every `interval` s while a round runs (a thread)."""

    databases: dict[str, pathlib.Path]
    interval: float = 0.5

    def __post_init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(backlog(self.databases))

    def __enter__(self) -> BacklogSampler:
        self.samples.append(backlog(self.databases))
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(backlog(self.databases))

    def figures(self, events_per_second: float) -> dict[str, float]:
        """Start, peak and end of the backlog, and the bound the end is held to: the
        start plus one second of the round's events."""
        return {
            "start": self.samples[0],
            "peak": max(self.samples),
            "end": self.samples[-1],
            "bound": self.samples[0] + events_per_second,
            "events_per_second": events_per_second,
        }


def lag_summary(lags: list[float]) -> dict[str, float]:
    ordered = sorted(lags)
    return {
        "events": len(ordered),
        "p50_ms": percentile(ordered, 0.50) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }
