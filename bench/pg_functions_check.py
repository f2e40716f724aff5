"""Checks that bench/pg_functions.py's functions answer what bench/pg_sql.py's statements
answer and leave the same rows, before bench/pg_drivers.py times them.

One script of calls runs on each path in turn, each on its own order ids (the statements
in BEGIN ... COMMIT on asyncpg's pool, the functions one call each in autocommit): the
order's happy path with every repeat and wrong caller refused (a repeated create or
reserve or authorize, a stale epoch, a foreign owner, a second advance, commit, capture,
finish), the refusals that roll a write back (OUT_OF_STOCK, UNKNOWN_SKU,
ACCOUNT_NOT_FOUND), a decline, and a hold and an authorization that expire at once, so
that the sweeps find and give them back. The answers (order ids renamed), the rows of
every order the script touched, and what the stock and the accounts moved by must be
equal on both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg

from bench import pg_functions, pg_sql

OWNER = "check-host:1"
USER = "user-0000"
SKUS = ("SKU-000", "SKU-001", "SKU-002")
LETTERS = "ABCDEFG"
ROWS = {
    "orders": [
        "SELECT order_id, user_id, fingerprint, state, cancel_reason, total_minor, currency"
        " FROM orders WHERE order_id LIKE $1 ORDER BY order_id",
        "SELECT order_id, position, sku, quantity, price_minor, currency FROM order_items"
        " WHERE order_id LIKE $1 ORDER BY order_id, position",
        "SELECT order_id, phase, compensate_from, cancel_requested, failure FROM sagas"
        " WHERE order_id LIKE $1 ORDER BY order_id",
        "SELECT order_id, owner, epoch FROM saga_leases WHERE order_id LIKE $1 ORDER BY 1",
    ],
    "inventory": [
        "SELECT order_id, user_id, state, fingerprint FROM reservations"
        " WHERE order_id LIKE $1 ORDER BY order_id",
        "SELECT order_id, sku, quantity, price_minor, currency FROM reservation_items"
        " WHERE order_id LIKE $1 ORDER BY order_id, sku",
    ],
    "payment": [
        "SELECT order_id, user_id, amount_minor, currency, state FROM payments"
        " WHERE order_id LIKE $1 ORDER BY order_id",
        "SELECT order_id FROM authorization_expiry WHERE order_id LIKE $1 ORDER BY 1",
    ],
}
BALANCES = {
    "inventory": "SELECT sku, available, held, sold FROM products ORDER BY sku",
    "payment": "SELECT user_id, available, held, captured FROM accounts ORDER BY user_id",
}


class Path:
    """One way of writing: `statements` (pg_sql.py in a transaction) or `functions`."""

    def __init__(self, name: str, pools: dict[str, pg_sql.Pool]) -> None:
        self.name, self.pools = name, pools
        self.steps: Any = pg_functions if name == "functions" else pg_sql

    async def write(self, db: str, step: str, *args: Any, **kw: Any) -> Any:
        """The step's answer, or the refusal it raised (as the string `refused: ...`)."""
        pool = self.pools[db]
        opened = pool.read() if self.name == "functions" else pool.transaction()
        try:
            async with opened as conn:
                return await getattr(self.steps, step)(conn, *args, **kw)
        except LookupError as refused:
            return f"refused: {refused}"


async def script(path: Path, ids: dict[str, str], empty_sku: str, poor_user: str) -> list[Any]:
    """Every answer of the script, in order."""
    a, b, c, d, e, f, g = (ids[x] for x in LETTERS)
    items = [(SKUS[1], 2), (SKUS[0], 1)]  # listed out of SKU order on purpose
    w = path.write
    answers: list[Any] = [
        await w(
            "orders", "create_order", a, USER, f"req-{a}", items, owner=OWNER, lease_seconds=10.0
        ),
        # A repeat of the request under another order id answers the first order.
        await w(
            "orders", "create_order", b, USER, f"req-{a}", items, owner=OWNER, lease_seconds=10.0
        ),
        # A hold that is due at once: the next reserve's sweep gives its stock back.
        await w("inventory", "reserve", f, USER, [(SKUS[2], 3)], hold_seconds=0.0),
    ]
    priced = await w("inventory", "reserve", a, USER, items, hold_seconds=600.0)
    answers += [
        priced,
        await w("inventory", "reserve", a, USER, items, hold_seconds=600.0),
        await w(
            "inventory", "reserve", b, USER, [(SKUS[0], 1), (empty_sku, 1)], hold_seconds=600.0
        ),
        # The refusal rolled b's claim back: b can be reserved now.
        await w("inventory", "reserve", b, USER, [(SKUS[0], 1)], hold_seconds=600.0),
        await w("inventory", "reserve", c, USER, [("SKU-NONE", 1)], hold_seconds=600.0),
        await w("orders", "record_reserved", a, OWNER, 2, priced),
        await w("orders", "record_reserved", a, OWNER, 1, priced),
        await w("orders", "record_reserved", a, OWNER, 1, priced),
    ]
    total = sum(q * p for _, q, p in priced)
    answers += [
        # An authorization that is due at once: the next payment write's sweep ends it.
        await w("payment", "authorize", g, USER, 70, 0.0),
        await w("payment", "authorize", a, USER, total, 600.0),
        await w("payment", "authorize", a, USER, total, 600.0),
        await w("payment", "authorize", d, poor_user, 100, 600.0),
        await w("payment", "authorize", e, "nobody", 1, 600.0),
        await w("orders", "advance", a, "other-host:1", 1),
        await w("orders", "advance", a, OWNER, 1),
        await w("orders", "advance", a, OWNER, 1),
        await w("inventory", "commit_reservation", a, "someone-else"),
        await w("inventory", "commit_reservation", a, USER),
        await w("inventory", "commit_reservation", a, USER),
        await w("payment", "capture", a, "someone-else"),
        await w("payment", "capture", a, USER),
        await w("payment", "capture", a, USER),
        await w("payment", "capture", g, USER),  # expired by the sweep: nothing to capture
        await w("orders", "finish", a, "other-host:1", 1),
        await w("orders", "finish", a, OWNER, 1),
        await w("orders", "finish", a, OWNER, 1),  # the lease is gone: the fence refuses
    ]
    return answers


def _renamed(value: Any, ids: dict[str, str]) -> Any:
    """The value with the path's order ids replaced by their letters."""
    if isinstance(value, str):
        for letter, order_id in ids.items():
            value = value.replace(order_id, letter)
        return value
    if isinstance(value, list | tuple | asyncpg.Record):
        return [_renamed(v, ids) for v in value]
    return value


async def _read(
    dsn: Callable[[str], str], queries: Mapping[str, str | list[str]], *args: Any
) -> list[Any]:
    rows: list[Any] = []
    for db, sqls in queries.items():
        conn = await asyncpg.connect(dsn(db))
        try:
            for sql in [sqls] if isinstance(sqls, str) else sqls:
                rows.append([tuple(r) for r in await conn.fetch(sql, *args)])
        finally:
            await conn.close()
    return rows


def _moved(before: Sequence[Any], after: Sequence[Any]) -> list[Any]:
    """Per table, the rows whose figures changed, with the change."""
    moved = []
    for old_rows, new_rows in zip(before, after, strict=True):
        old = {r[0]: r[1:] for r in old_rows}
        moved.append(
            sorted(
                (key, *(n - o for n, o in zip(new, old[key], strict=True)))
                for key, *new in new_rows
                if tuple(new) != old[key]
            )
        )
    return moved


async def run_path(
    dsn: Callable[[str], str], name: str, empty_sku: str, poor_user: str
) -> dict[str, Any]:
    pools = {
        db: await pg_sql.open_pool("asyncpg-noreset", dsn(db), 2)
        for db in ("orders", "inventory", "payment")
    }
    ids = {letter: f"check-{name}-{letter}" for letter in LETTERS}
    try:
        before = await _read(dsn, BALANCES)
        answers = await script(Path(name, pools), ids, empty_sku, poor_user)
        after = await _read(dsn, BALANCES)
        rows = await _read(dsn, ROWS, f"check-{name}-%")
    finally:
        for pool in pools.values():
            await pool.close()
    return {
        "answers": _renamed(answers, ids),
        "rows": _renamed(rows, ids),
        "moved": _moved(before, after),
    }


async def check(dsn: Callable[[str], str], empty_sku: str, poor_user: str) -> None:
    """Raises AssertionError, saying where, if the paths differ in any answer or row."""
    statements = await run_path(dsn, "statements", empty_sku, poor_user)
    functions = await run_path(dsn, "functions", empty_sku, poor_user)
    for part in ("answers", "rows", "moved"):
        assert functions[part] == statements[part], (
            f"{part} differ:\n statements {statements[part]}\n functions  {functions[part]}"
        )
    # And the script did what it says (so that equal is not equally wrong).
    answers = statements["answers"]
    assert answers[:2] == [["A", True], ["A", False]], answers
    assert answers[5] == "refused: OUT_OF_STOCK" and answers[7] == "refused: UNKNOWN_SKU", answers
    assert answers[15] == "refused: ACCOUNT_NOT_FOUND" and answers[14] == "DECLINED", answers
    assert answers[-3:] == [False, True, False], answers
    reservations = statements["rows"][len(ROWS["orders"])]
    assert ["F", USER, "EXPIRED", f"{SKUS[2]}x3"] in reservations, reservations
