"""shopmesh.check.check_events names each broken promise of the events: an outbox row not
sent, a final order told twice or never, a mail missing or of no record, a read model
whose revenue or units differ from the orders' and inventory's; `shopmesh check` checks
them once quiet and says so when they are not. On SQLite files made by the services' own
migrations; starts no process."""

from __future__ import annotations

import http.server
import json
import pathlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from services.inventory.store import InventoryStore
from services.notification.store import NotificationStore
from services.order.store import OrderStore
from services.payment.store import PaymentStore
from services.reporting.store import ReportingStore
from shopmesh.check import check_events, check_workdir
from shopmesh.tools import free_ports

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


class FakeMonitor(http.server.BaseHTTPRequestHandler):
    """NATS's /jsz as the check reads it (the real server's answer is read by the fault
    tests, through the same code): the consumers' lag set by the test."""

    lag: ClassVar[dict[str, tuple[int, int]]] = {}

    def do_GET(self) -> None:  # the name http.server calls
        consumers = [
            {"name": name, "num_pending": pending, "num_ack_pending": unacked}
            for name, (pending, unacked) in self.lag.items()
        ]
        body = json.dumps(
            {"account_details": [{"stream_detail": [{"consumer_detail": consumers}]}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def monitor() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMonitor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_shopmesh_check_checks_the_events_once_quiet(
    databases: dict[str, pathlib.Path], maildir: pathlib.Path, monitor: str
) -> None:
    FakeMonitor.lag = {"notification": (0, 0), "reporting": (0, 0)}
    report = check_workdir(maildir.parent, nats_monitor_url=monitor, quiet_seconds=5)
    assert report.unchecked == []
    assert report.counts["events checked"] == 1 and report.counts["final orders"] == 1
    assert "1 final orders notified once (0 extra mail copies)" in report.summary()
    execute(databases["notification"], "DELETE FROM notifications")
    report = check_workdir(maildir.parent, nats_monitor_url=monitor, quiet_seconds=5)
    assert "order o1 (CONFIRMED) has 0 notification records, not 1" in report.problems


def test_events_still_in_flight_are_left_unchecked_and_said(
    databases: dict[str, pathlib.Path], maildir: pathlib.Path, monitor: str
) -> None:
    FakeMonitor.lag = {"notification": (0, 0), "reporting": (2, 1)}
    execute(databases["notification"], "DELETE FROM notifications")  # would be a problem
    report = check_workdir(maildir.parent, nats_monitor_url=monitor, quiet_seconds=0.3)
    assert report.unchecked == ["events, not quiet after 0.3 s: reporting 3 behind"]
    assert not any("notification" in p for p in report.problems)
    FakeMonitor.lag = {"reporting": (0, 0)}
    report = check_workdir(maildir.parent, nats_monitor_url=monitor, quiet_seconds=0.3)
    assert report.unchecked == ["events, not quiet after 0.3 s: no notification consumer"]


def test_events_are_left_unchecked_without_a_nats_server(
    databases: dict[str, pathlib.Path], maildir: pathlib.Path
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    report = check_workdir(maildir.parent, nats_monitor_url=f"http://127.0.0.1:{port}")
    assert report.unchecked == [
        f"events: NATS monitoring at http://127.0.0.1:{port} does not answer (they are"
        " checked on a running system: its --nats-monitor-port)"
    ]
