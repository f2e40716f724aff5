"""`shopmesh check` against a real stack's databases: every promise holds after real
orders, and each broken promise (made by hand in a database) is named, exit status 1."""

from __future__ import annotations

import pathlib
import sqlite3
import subprocess
import sys

import pytest

from tests.helpers import Client, fails, run_command, wait_for
from tests.stack import Stack, StackFactory, restart

pytestmark = pytest.mark.sqlite_only(
    "`shopmesh check --workdir` reads the SQLite files of a work directory, and these"
    " tests break promises by writing to them; on PostgreSQL the model and fault tests run"
    " the same checks (shopmesh.check.check_databases) on the servers' databases"
)


def shopmesh_check(workdir: pathlib.Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return run_command(
        [sys.executable, "-m", "shopmesh.cli", "check", "--workdir", str(workdir), *flags],
        expect=None,
    )


def orders_placed(make_stack: StackFactory, **settings: str) -> tuple[Stack, Client, str, str]:
    """A stack with one confirmed order (alice) and one cancelled for want of money (bob)."""
    stack, client = make_stack(**settings)
    confirmed = client.create_order("alice", "r1", [("SKU-TEA", 3), ("SKU-MUG", 1)])
    refused = fails(lambda: client.create_order("bob", "r2", [("SKU-MUG", 2)]))
    return stack, client, confirmed.order_id, refused.metadata["order_id"]


def write(path: pathlib.Path, *statements: str) -> None:
    with sqlite3.connect(path, isolation_level=None, timeout=5) as conn:
        for statement in statements:
            conn.execute(statement)


def test_every_promise_holds_after_real_orders(make_stack: StackFactory) -> None:
    stack, _, _, _ = orders_placed(make_stack)
    ran = shopmesh_check(stack.order.workdir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2 orders (1 confirmed, 1 cancelled, 0 in flight, 0 parked)" in ran.stdout
    assert "every promise holds" in ran.stdout


def test_stock_that_appears_from_nowhere_is_named(make_stack: StackFactory) -> None:
    stack, _, _, _ = orders_placed(make_stack)
    write(
        stack.order.workdir / "inventory.db",
        "UPDATE products SET held = held + 1 WHERE sku = 'SKU-TEA'",
    )
    ran = shopmesh_check(stack.order.workdir)
    assert ran.returncode == 1, ran.stdout
    assert "PROBLEM: SKU-TEA: 1 held, but HELD reservations add up to 0" in ran.stdout


def test_a_charge_for_a_cancelled_order_is_named(make_stack: StackFactory) -> None:
    stack, _, _, cancelled = orders_placed(make_stack)
    write(
        stack.order.workdir / "payment.db",
        # bob's declined payment, turned into a charge his account agrees with
        "UPDATE accounts SET captured = captured + (SELECT amount_minor FROM payments"
        f" WHERE order_id = '{cancelled}') WHERE user_id = 'bob'",
        f"UPDATE payments SET state = 'CAPTURED' WHERE order_id = '{cancelled}'",
    )
    ran = shopmesh_check(stack.order.workdir)
    assert ran.returncode == 1, ran.stdout
    assert f"cancelled order {cancelled} was charged" in ran.stdout
    assert "account bob" not in ran.stdout  # the account agrees with its payments


def test_a_stuck_order_is_a_problem_until_parked(make_stack: StackFactory) -> None:
    stack, _, confirmed, _ = orders_placed(make_stack)
    order_db = stack.order.workdir / "order.db"
    stack.order.stop()  # nothing drives the saga we are about to break
    # As a saga that stopped before its last step leaves the order: its row, its saga and
    # its log (without OrderConfirmed, and so last updated when its stock was held).
    log = f"FROM order_events WHERE order_id = '{confirmed}' AND type = 'shop.order.v1.Order"
    write(
        order_db,
        f"DELETE {log}Confirmed'",
        f"UPDATE orders SET state = 'PENDING', updated_at = (SELECT occurred_at {log}Reserved')"
        f" WHERE order_id = '{confirmed}'",
        f"UPDATE sagas SET phase = 'COMMITTING', updated_at = 0 WHERE order_id = '{confirmed}'",
    )
    ran = shopmesh_check(stack.order.workdir)
    assert ran.returncode == 1, ran.stdout
    assert f"order {confirmed} is PENDING (saga COMMITTING)" in ran.stdout
    write(
        order_db,
        "INSERT INTO parked_sagas VALUES"
        f" ('{confirmed}', 'COMMITTING', 'CAPTURE_REFUSED', 'test', 0)",
    )
    ran = shopmesh_check(stack.order.workdir)
    assert ran.returncode == 0, ran.stdout
    assert f"needs an operator: order {confirmed}: parked in COMMITTING: CAPTURE_REFUSED" in (
        ran.stdout
    )


def test_an_order_changed_without_its_log_is_named(make_stack: StackFactory) -> None:
    stack, _, confirmed, cancelled = orders_placed(make_stack)
    ran = shopmesh_check(stack.order.workdir)
    assert "2 order logs replayed" in ran.stdout, ran.stdout
    order_db = stack.order.workdir / "order.db"
    write(
        order_db,
        f"UPDATE orders SET total_minor = total_minor + 1 WHERE order_id = '{confirmed}'",
        f"DELETE FROM order_events WHERE order_id = '{cancelled}' AND sequence = 2",
    )
    ran = shopmesh_check(stack.order.workdir)
    assert ran.returncode == 1, ran.stdout
    assert f"PROBLEM: order {confirmed}: total_minor is 2650 in the row, 2649 by the log" in (
        ran.stdout
    )
    assert f"PROBLEM: order {cancelled}: its log is broken: entry 2 has sequence 3" in ran.stdout


def test_a_missing_work_directory_is_said_plainly(tmp_path: pathlib.Path) -> None:
    ran = shopmesh_check(tmp_path / "nothing-here")
    assert ran.returncode == 2
    assert "no database at" in ran.stderr and "--workdir" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_every_promise_holds_after_retention_pruned_the_cancelled_order(
    make_stack: StackFactory,
) -> None:
    """Payment and inventory prune a cancelled order's rows past their retention (1 s
    here; a released hold counts from when it would have expired: 1 s here too); the
    check reads the databases and must not miss them."""
    stack, client, confirmed, cancelled = orders_placed(make_stack, hold_seconds="1")
    for service in (stack.payment, stack.inventory):
        service.stop()
    stack.payment = restart(stack.payment, retention_seconds="1")
    stack.inventory = restart(stack.inventory, retention_seconds="1")
    wait_for(lambda: client.payment_of(cancelled) is None, "bob's declined payment to be pruned")
    wait_for(
        lambda: not rows(stack.order.workdir / "inventory.db", "reservations", cancelled),
        "bob's released reservation to be pruned",
    )
    assert not rows(stack.order.workdir / "inventory.db", "reservation_items", cancelled)
    assert client.payment_of(confirmed) is not None  # a capture is never pruned
    assert rows(stack.order.workdir / "inventory.db", "reservations", confirmed)
    ran = shopmesh_check(stack.order.workdir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2 orders (1 confirmed, 1 cancelled, 0 in flight, 0 parked)" in ran.stdout
    assert client.balance("bob") == (2000, 0)
    assert client.stock("SKU-MUG") == (24, 0, 1)


def rows(path: pathlib.Path, table: str, order_id: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        return int(
            conn.execute(
                f"SELECT count(*) FROM {table} WHERE order_id = ?", (order_id,)
            ).fetchone()[0]
        )
