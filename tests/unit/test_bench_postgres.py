"""The PostgreSQL side of `make bench` and `make profile-pg` that runs without a server: the
statements counted from the server's log, the counters' line in the report, SQLite's
durability read from its file."""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3

from bench import durability
from bench.pg_profile import PREFIX, count_statements
from bench.report import pg_lines

# As PostgreSQL 15 logs them with log_statement = all and our log_line_prefix: BEGIN and
# COMMIT by the simple protocol, asyncpg's statements by the extended one (named when
# prepared and cached, unnamed otherwise), and a line of another kind in between.
LOG = f"""\
{PREFIX} order|LOG:  statement: BEGIN;
{PREFIX} order|LOG:  execute __asyncpg_stmt_3__: SELECT 1 FROM saga_leases
\tWHERE order_id = $1 FOR SHARE
{PREFIX} order|DETAIL:  parameters: $1 = 'o1'
{PREFIX} order|LOG:  execute <unnamed>: SELECT 1 FROM saga_leases WHERE order_id = $1 FOR SHARE
{PREFIX} order|LOG:  statement: COMMIT;
{PREFIX} payment|LOG:  execute __asyncpg_stmt_1__: SELECT currency FROM accounts WHERE user_id = $1
{PREFIX} |LOG:  checkpoint starting: time
2026-12-02 18:00:00 UTC LOG:  database system is ready to accept connections
"""


def test_statements_are_counted_per_database_by_their_text() -> None:
    counted = count_statements(LOG)

    assert dict(counted["order"]) == {
        "BEGIN;": 1,
        # Logged on two lines once, on one line once: the same statement.
        "SELECT 1 FROM saga_leases WHERE order_id = $1 FOR SHARE": 2,
        "COMMIT;": 1,
    }
    assert dict(counted["payment"]) == {"SELECT currency FROM accounts WHERE user_id = $1": 1}
    assert set(counted) == {"order", "payment"}  # no statement of no database


def test_the_report_shows_what_an_order_cost_each_database() -> None:
    per_order = {"orders": 100.0, "wal.wal_records": 80.0, "wal.wal_write": 7.0}
    per_order["wal.wal_sync"] = 6.5
    for db, commits in (("order", 4.0), ("inventory", 2.0), ("payment", 2.0)):
        per_order |= {
            f"{db}.xact_commit": commits,
            f"{db}.xact_rollback": 0.0,
            f"{db}.tup_inserted": 1.0,
            f"{db}.tup_updated": 2.0,
            f"{db}.tup_deleted": 0.5,
            f"{db}.tup_fetched": 9.0,
            f"{db}.tup_returned": 12.0,
        }

    [line] = pg_lines(per_order)

    assert line.startswith("PostgreSQL per order (over 100 orders): order 4.0 commits")
    assert "inventory 2.0 commits (0.00 rolled back), 3.5 rows written, 9.0 fetched" in line
    assert line.endswith("WAL 80.0 records, 7.00 writes, 6.50 fsyncs.")
    assert pg_lines({}) == []  # no PostgreSQL system measured, no line


def test_sqlite_durability_is_read_from_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "order.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")

    assert durability.sqlite(path) == {"journal_mode": "wal", "synchronous": "FULL"}
