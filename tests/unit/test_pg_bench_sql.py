"""The PostgreSQL benchmark's statement helpers (bench/pg_sql.py), which run no server."""

from __future__ import annotations

from bench.pg_drivers import percentile
from bench.pg_sql import numbered


def test_placeholders_are_numbered_for_asyncpg_in_order() -> None:
    sql = "UPDATE p SET a = a - %s, h = h + %s WHERE sku = %s AND a >= %s"
    assert numbered(sql) == "UPDATE p SET a = a - $1, h = h + $2 WHERE sku = $3 AND a >= $4"


def test_a_statement_without_placeholders_is_unchanged() -> None:
    assert numbered("SELECT now()") == "SELECT now()"


def test_percentile_takes_the_value_at_the_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 100.0
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN: nothing measured
