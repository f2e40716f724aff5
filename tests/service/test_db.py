"""Opening a database: instances that start together on one new file all get it open (the
file is switched to WAL once, whoever comes first) and migrated (one applies each migration,
the others wait for it and find it applied)."""

from __future__ import annotations

import contextlib
import multiprocessing
import pathlib
import sqlite3
from multiprocessing.synchronize import Barrier

from services.common import migrations
from services.order.store import OrderStore

STARTING_TOGETHER = 6
GROUPS = 40


def _open(path: pathlib.Path, barrier: Barrier) -> None:
    barrier.wait()
    OrderStore(path).close()  # raises (exit code 1) if the file could not be opened


def applied(path: pathlib.Path) -> list[str]:
    """Every migration yoyo's log says was applied to the file, as often as it was."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [
            m
            for (m,) in conn.execute("SELECT migration_id FROM _yoyo_log WHERE operation = 'apply'")
        ]


def test_instances_starting_together_on_a_new_file_all_open_and_migrate_it(
    tmp_path: pathlib.Path,
) -> None:
    # Before the WAL switch was retried, about one such group in three had a start fail
    # with "database is locked" (measured); forty groups make a regression show every time.
    context = multiprocessing.get_context("fork")
    everything = sorted(p.stem for p in migrations.folder("order").glob("*.sql"))
    for attempt in range(GROUPS):
        path = tmp_path / f"order-{attempt}.db"
        barrier = context.Barrier(STARTING_TOGETHER)
        starts = [
            context.Process(target=_open, args=(path, barrier)) for _ in range(STARTING_TOGETHER)
        ]
        for start in starts:
            start.start()
        for start in starts:
            start.join(timeout=30)
        assert [s.exitcode for s in starts] == [0] * STARTING_TOGETHER, f"group {attempt}"
        assert sorted(applied(path)) == everything, f"group {attempt}: applied once each"
        assert all(m.applied for m in migrations.status(path, "order"))
