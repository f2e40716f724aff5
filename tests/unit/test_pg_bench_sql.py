"""The PostgreSQL benchmark's helpers (bench/pg_sql.py, bench/pg_functions.py and its
check), on what runs without a server."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from bench import pg_functions, pg_functions_check, pg_sql
from bench.pg_drivers import CALLS, STATEMENTS, percentile
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


class OneRow:
    """A connection that answers every statement with one row, or raises: what the
    function path's wrappers see of a call."""

    def __init__(self, row: Sequence[Any] | None = None, error: Exception | None = None) -> None:
        self.row, self.error = row, error
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    async def execute(self, sql: str, *args: Any) -> int:
        raise AssertionError("a function call is one fetch")

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        self.sent.append((sql, args))
        if self.error is not None:
            raise self.error
        assert self.row is not None
        return [self.row]

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise AssertionError("a function call is one fetch")


def raised(message: str) -> asyncpg.exceptions.RaiseError:
    """What asyncpg raises for a PL/pgSQL `RAISE EXCEPTION 'message'`."""
    error = asyncpg.exceptions.RaiseError.new({"M": message, "C": "P0001", "S": "ERROR"})
    assert isinstance(error, asyncpg.exceptions.RaiseError)
    return error


def test_each_write_of_the_function_path_takes_the_statement_paths_arguments() -> None:
    for statements, calls in zip(
        dataclasses.astuple(STATEMENTS), dataclasses.astuple(CALLS), strict=True
    ):
        expected = list(inspect.signature(statements).parameters)
        if statements is pg_sql.reserve:  # its SKU-order switch is for the race tests only
            expected.remove("sort_skus")
        assert list(inspect.signature(calls).parameters) == expected, calls.__name__
        assert calls.__module__ == pg_functions.__name__


async def test_a_reserve_call_answers_the_priced_items_as_the_statements_do() -> None:
    conn = OneRow(("HELD", ["SKU-000", "SKU-001"], [1, 2], [450, 300]))
    priced = await pg_functions.reserve(
        conn, "o1", "u1", [("SKU-001", 2), ("SKU-000", 1)], hold_seconds=600
    )
    assert priced == [("SKU-000", 1, 450), ("SKU-001", 2, 300)]
    [(sql, args)] = conn.sent
    assert sql.startswith("SELECT") and "bench_reserve(" in sql
    assert args == ("o1", "u1", ["SKU-001", "SKU-000"], [2, 1], 600.0)
    repeat = OneRow(("EXISTING", None, None, None))
    assert await pg_functions.reserve(repeat, "o1", "u1", [("SKU-000", 1)], hold_seconds=1) == (
        "EXISTING"
    )


async def test_a_refusal_raised_in_a_function_is_the_statement_paths_lookup_error() -> None:
    with pytest.raises(LookupError, match=r"^OUT_OF_STOCK$"):
        await pg_functions.reserve(
            OneRow(error=raised("OUT_OF_STOCK")), "o1", "u1", [("S", 1)], hold_seconds=1
        )
    with pytest.raises(LookupError, match=r"^ACCOUNT_NOT_FOUND$"):
        await pg_functions.authorize(OneRow(error=raised("ACCOUNT_NOT_FOUND")), "o1", "u", 1, 1)
    # Any other error raised in a function stays what it is.
    with pytest.raises(asyncpg.exceptions.RaiseError):
        await pg_functions.capture(OneRow(error=raised("something else")), "o1", "u1")


def test_the_functions_check_compares_what_moved_and_names_orders_by_letter() -> None:
    before = [[("SKU-000", 10, 0, 0), ("SKU-001", 5, 0, 0)]]
    after = [[("SKU-000", 8, 1, 1), ("SKU-001", 5, 0, 0)]]
    assert pg_functions_check._moved(before, after) == [[("SKU-000", -2, 1, 1)]]
    ids = {"A": "check-functions-A", "B": "check-functions-B"}
    assert pg_functions_check._renamed(
        [("check-functions-A", True), "x check-functions-B"], ids
    ) == [
        ["A", True],
        "x B",
    ]
