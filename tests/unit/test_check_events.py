"""shopmesh.check.check_events names each broken promise of the events: an outbox row not
sent, a final order told twice or never, a mail missing or of no record, a read model
whose revenue or units differ from the orders' and inventory's. On SQLite files made by
the services' own migrations; starts no process."""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import Iterator

import pytest

from services.inventory.store import InventoryStore
from services.notification.store import NotificationStore
from services.order.store import OrderStore
from services.payment.store import PaymentStore
from services.reporting.store import ReportingStore
from shopmesh.check import check_events

STORES = {
    "order": OrderStore,
    "inventory": InventoryStore,
    "payment": PaymentStore,
    "notification": NotificationStore,
    "reporting": ReportingStore,
}
MESSAGE_ID = "<e1@notification.shopmesh>"


@pytest.fixture
def databases(tmp_path: pathlib.Path) -> Iterator[dict[str, pathlib.Path]]:
    """A quiet system's databases whose promises hold: one confirmed order of 900, told
    once and mailed once, its 2 units sold and counted by the read model."""
    paths = {name: tmp_path / f"{name}.db" for name in STORES}
    for name, store in STORES.items():
        store(paths[name]).close()  # the schema, by the service's migrations
    execute(
        paths["order"],
        "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state, total_minor,"
        " currency, created_at, updated_at) VALUES ('o1', 'alice', 'r1', '', 'CONFIRMED',"
        " 900, 'USD', 1, 1)",
    )
    execute(
        paths["notification"],
        "INSERT INTO notifications (event_id, order_id, user_id, order_state, state,"
        f" message_id, created_at, updated_at) VALUES ('e1', 'o1', 'alice', 'CONFIRMED',"
        f" 'SENT', '{MESSAGE_ID}', 1, 1)",
    )
    execute(
        paths["inventory"],
        "INSERT INTO products (sku, name, price_minor, currency, available, sold)"
        " VALUES ('SKU-TEA', 'tea', 450, 'USD', 8, 2)",
    )
    execute(
        paths["reporting"],
        "INSERT INTO day_revenue (day, currency, orders, revenue_minor)"
        " VALUES ('2026-12-02', 'USD', 1, 900)",
        "INSERT INTO product_sales (sku, currency, product_name, units, revenue_minor)"
        " VALUES ('SKU-TEA', 'USD', 'tea', 2, 900)",
    )
    yield paths


@pytest.fixture
def maildir(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "mail" / "new").mkdir(parents=True)
    for sub in ("cur", "tmp"):
        (tmp_path / "mail" / sub).mkdir()
    mail(tmp_path / "mail", "1", MESSAGE_ID)
    return tmp_path / "mail"


def execute(path: pathlib.Path, *statements: str) -> None:
    with sqlite3.connect(path) as conn:
        for sql in statements:
            conn.execute(sql)


def mail(maildir: pathlib.Path, name: str, message_id: str) -> None:
    (maildir / "new" / name).write_text(
        f"Message-ID: {message_id}\nTo: alice@shopmesh.example\nSubject: o1\n\nconfirmed\n"
    )


def test_a_system_that_kept_its_promises_passes(
    databases: dict[str, pathlib.Path], maildir: pathlib.Path
) -> None:
    report = check_events(databases, maildir)
    assert report.ok, report.problems
    assert report.counts["final orders"] == 1


def test_an_unsent_outbox_row_is_named(databases: dict[str, pathlib.Path]) -> None:
    execute(
        databases["payment"],
        "INSERT INTO outbox (event_id, aggregate_id, sequence, subject, envelope, created_at)"
        " VALUES ('p1', 'o1', 1, 'shop.payment.v1.PaymentCaptured', x'00', 1)",
    )
    assert check_events(databases).problems == ["payment: 1 events in the outbox not sent"]


def test_a_final_order_never_told_is_named(databases: dict[str, pathlib.Path]) -> None:
    execute(databases["notification"], "DELETE FROM notifications")
    problems = check_events(databases).problems
    assert problems == ["order o1 (CONFIRMED) has 0 notification records, not 1"]


def test_a_missing_mail_and_a_stray_one_are_named(
    databases: dict[str, pathlib.Path], maildir: pathlib.Path
) -> None:
    (maildir / "new" / "1").unlink()
    mail(maildir, "2", "<e9@notification.shopmesh>")
    assert check_events(databases, maildir).problems == [
        "order o1: no message in the Maildir",
        "1 Maildir messages of no notification record",
    ]


def test_a_copy_with_the_same_message_id_is_counted_not_a_problem(
    databases: dict[str, pathlib.Path], maildir: pathlib.Path
) -> None:
    mail(maildir, "2", MESSAGE_ID)
    report = check_events(databases, maildir)
    assert report.ok, report.problems
    assert report.counts["mail copies"] == 1


def test_a_read_model_off_the_orders_or_inventory_is_named(
    databases: dict[str, pathlib.Path],
) -> None:
    execute(
        databases["reporting"],
        "UPDATE day_revenue SET revenue_minor = 1800",
        "UPDATE product_sales SET units = 4",
    )
    assert check_events(databases).problems == [
        "read model revenue 1800, confirmed orders total 900",
        "SKU-TEA: read model 4 units sold, inventory 2",
    ]
