"""`shopmesh check`: the system's promises, read straight from the services' databases.

What it checks (the saga's invariants, in the terms the databases hold):

- every order is final, or parked with a reason, or still inside `settle_seconds` (in
  flight); a PENDING order past that, not parked, is a saga nobody finishes;
- a CONFIRMED order's hold is COMMITTED and its payment CAPTURED for exactly its total
  (a free order has no payment); a CANCELLED one has a reason, no hold left and no money
  held or taken;
- per product, `held` is the sum of the HELD reservations and `sold` of the COMMITTED
  ones: no stock appears or vanishes; per account, `held` is the sum of the AUTHORIZED
  payments and `captured` of the CAPTURED ones: no money does;
- no stock is sold and no money captured for an order that was cancelled, and at most one
  payment exists per order (the payments table's key), so at most one capture;
- each order's event log replays to its row and its saga (services.order.history: state,
  reason, total, items and prices, times, phase, cancel flag), with no gap in its
  sequence; orders made before the log existed (order_log_start) have none, and are
  counted apart;
- once the events are quiet (every outbox sent, the notification and reporting consumers
  at the stream's end, read from NATS's monitoring): every CONFIRMED or CANCELLED order
  has exactly one notification record and, with the local sink, a message in the Maildir
  (copies only with the same Message-ID); the read model's revenue and units per SKU equal
  the orders' and inventory's own. Under steady load they are never quiet: then the
  events are left unchecked, and it says so (not a problem).

Participants prune rows that hold nothing past their retention (released and expired
reservations, voided, declined and expired payments, tombstones), never a COMMITTED
reservation or a CAPTURED payment. So a CANCELLED order's rows may be missing, which
these checks accept (they ask that it hold and take nothing), while a CONFIRMED order's
hold and capture are always there to be checked.

It runs against a live system too: each database is read in one read transaction (a
consistent snapshot of that service), the order database first. A participant's state
moves before the order's does (the hold is committed and the payment captured before the
order is CONFIRMED), so a final order's holds and payments can no longer change, and
whatever a participant holds for an order that is not final yet, or not yet in the
order snapshot, is in flight and only counted. On one host the databases are SQLite files
in the work directory (`var/` for `make run`), opened read-only, or, while `shopmesh run
--postgres` runs its cluster there, PostgreSQL databases, each read as its service's role
in a REPEATABLE READ, READ ONLY transaction (one snapshot).
"""

from __future__ import annotations

import json
import mailbox
import pathlib
import sqlite3
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services.order import history
from services.order.domain import Phase
from shop.events.v1 import envelope_pb2
from shopmesh.postgres import SERVICES, Cluster, ServiceDatabase

Location = pathlib.Path | ServiceDatabase
"""Where a service's database is: a SQLite file, or a PostgreSQL database."""
Row = Mapping[str, Any]

SETTLE_SECONDS = 60.0
"""How long a PENDING order may stand still, not parked, before it counts as a problem."""
QUIET_SECONDS = 30.0
"""How long `check_workdir` waits for the events to be quiet before it leaves them unchecked."""
EVENT_CONSUMERS = ("notification", "reporting")
"""The stream's durable consumers whose work `check_events` checks."""


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    """Broken promises: each one a sentence naming what and where."""
    parked: list[str] = field(default_factory=list)
    """Orders whose saga waits for an operator (not a broken promise, but unfinished)."""
    counts: Counter[str] = field(default_factory=Counter)
    """How many orders in each state, products and accounts: what was looked at."""
    unchecked: list[str] = field(default_factory=list)
    """What could not be checked, and why (events still in flight): not a problem."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        c = self.counts
        return (
            f"{c['orders']} orders ({c['CONFIRMED']} confirmed, {c['CANCELLED']} cancelled,"
            f" {c['in flight']} in flight, {c['parked']} parked), {c['products']} products,"
            f" {c['accounts']} accounts; {c['logs replayed']} order logs replayed"
            + (f", {c['before the log']} orders older than the log" if c["before the log"] else "")
            + (
                f"; events: outboxes sent, {c['final orders']} final orders notified once"
                f" ({c['mail copies']} extra mail copies), read model totals compared"
                if c["events checked"]
                else ""
            )
        )


def workdir_databases(workdir: pathlib.Path) -> dict[str, Location]:
    """The SQLite databases a one-host system keeps in `workdir` (order.db, ...)."""
    return {name: workdir / f"{name}.db" for name in SERVICES}


def check_workdir(
    workdir: pathlib.Path,
    settle_seconds: float = SETTLE_SECONDS,
    nats_monitor_url: str | None = None,
    quiet_seconds: float = QUIET_SECONDS,
) -> Report:
    """Checks the databases a one-host system keeps in `workdir`: the PostgreSQL ones if
    its cluster (`shopmesh run --postgres`) runs, else the SQLite files (order.db, ...).
    With `nats_monitor_url` (its NATS server's monitoring) and the notification database
    there, the events too, once they are quiet (`check_events`): it waits for that up to
    `quiet_seconds`, and says what was still in flight if they never were."""
    cluster = Cluster(workdir)
    port = cluster.running_port()
    if port is None:
        databases = workdir_databases(workdir)
    else:
        cluster.port = port
        databases = {name: cluster.database_of(name) for name in SERVICES}
    report = check_databases(databases, settle_seconds)
    notification = databases["notification"]
    if nats_monitor_url is None or (
        isinstance(notification, pathlib.Path) and not notification.exists()
    ):
        return report  # a system without its events (or not asked for them)
    if consumers_lag(nats_monitor_url) is None:
        report.unchecked.append(
            f"events: NATS monitoring at {nats_monitor_url} does not answer (they are"
            " checked on a running system: its --nats-monitor-port)"
        )
        return report
    in_flight = wait_for_quiet(databases, nats_monitor_url, quiet_seconds)
    if in_flight:
        report.unchecked.append(f"events, not quiet after {quiet_seconds:g} s: {in_flight}")
        return report
    maildir = workdir / "mail"
    events = check_events(databases, maildir if maildir.exists() else None)
    report.problems += events.problems
    report.counts.update(events.counts)
    report.counts["events checked"] = 1
    return report


def check_databases(
    databases: Mapping[str, Location], settle_seconds: float = SETTLE_SECONDS
) -> Report:
    """Checks the services' databases, named by service: SQLite files or PostgreSQL."""
    return check(databases["order"], databases["inventory"], databases["payment"], settle_seconds)


ORDER_QUERIES = {
    "orders": "SELECT o.*, s.phase, s.cancel_requested, s.updated_at AS saga_updated_at,"
    " p.reason AS parked_reason FROM orders o JOIN sagas s USING (order_id)"
    " LEFT JOIN parked_sagas p USING (order_id)",
    "items": "SELECT * FROM order_items ORDER BY order_id, position",
    "log": "SELECT order_id, envelope FROM order_events ORDER BY order_id, sequence",
    "log_start": "SELECT first_seq FROM order_log_start",
}
"""What the checks read of the order database, in one snapshot."""


def check_history(order_db: Location) -> Report:
    """The order logs' check alone: every order's log replays to its row and saga."""
    report = Report()
    _check_logs(report, _read(order_db, **ORDER_QUERIES))
    return report


def check(
    order_db: Location,
    inventory_db: Location,
    payment_db: Location,
    settle_seconds: float = SETTLE_SECONDS,
    now: float | None = None,
) -> Report:
    now = time.time() if now is None else now
    ordered = _read(order_db, **ORDER_QUERIES)
    orders = ordered["orders"]
    stock = _read(
        inventory_db,
        products="SELECT sku, available, held, sold FROM products",
        reservations="SELECT order_id, state FROM reservations",
        items="SELECT r.state, i.order_id, i.sku, i.quantity FROM reservation_items i"
        " JOIN reservations r USING (order_id)",
    )
    money = _read(
        payment_db,
        accounts="SELECT user_id, available, held, captured FROM accounts",
        payments="SELECT order_id, user_id, amount_minor, state FROM payments",
    )
    report = Report()
    _check_orders(report, orders, stock, money, now=now, settle_seconds=settle_seconds)
    _check_logs(report, ordered)
    _check_stock(report, stock)
    _check_money(report, money)
    return report


def _read(location: Location, **queries: str) -> dict[str, list[Row]]:
    """Runs `queries` in one read-only transaction on the database at `location`."""
    if isinstance(location, ServiceDatabase):
        return _read_server(location, queries)
    path = location
    if not path.exists():
        raise FileNotFoundError(f"no database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("BEGIN")
        found = {name: conn.execute(sql).fetchall() for name, sql in queries.items()}
        conn.execute("COMMIT")
        return found
    finally:
        conn.close()


def _read_server(database: ServiceDatabase, queries: Mapping[str, str]) -> dict[str, list[Row]]:
    password = database.password_file.read_text().strip()
    with psycopg.connect(
        database.url, password=password, connect_timeout=5, row_factory=dict_row
    ) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        found: dict[str, list[Row]] = {}
        with conn.transaction():
            for name, sql in queries.items():
                found[name] = [*conn.execute(sql).fetchall()]
        return found


def _check_orders(
    report: Report,
    orders: list[Row],
    stock: dict[str, list[Row]],
    money: dict[str, list[Row]],
    *,
    now: float,
    settle_seconds: float,
) -> None:
    holds = {r["order_id"]: r["state"] for r in stock["reservations"]}
    payments = {p["order_id"]: p for p in money["payments"]}
    states: dict[str, str] = {}
    for order in orders:
        order_id, state = order["order_id"], order["state"]
        states[order_id] = state
        report.counts["orders"] += 1
        report.counts[state] += 1
        hold, payment = holds.get(order_id), payments.get(order_id)
        if state == "PENDING":
            if order["parked_reason"] is not None:
                report.counts["parked"] += 1
                report.parked.append(
                    f"order {order_id}: parked in {order['phase']}: {order['parked_reason']}"
                )
            elif now - order["saga_updated_at"] > settle_seconds:
                report.problems.append(
                    f"order {order_id} is PENDING (saga {order['phase']}), has not moved"
                    f" for {now - order['saga_updated_at']:.0f} s, and is not parked"
                )
            else:
                report.counts["in flight"] += 1
        elif state == "CONFIRMED":
            if hold != "COMMITTED":
                report.problems.append(
                    f"order {order_id} is CONFIRMED but its stock hold is {hold or 'missing'}"
                )
            total = order["total_minor"]
            if total == 0:
                if payment is not None and payment["state"] in ("AUTHORIZED", "CAPTURED"):
                    report.problems.append(f"free order {order_id} has a payment {_shown(payment)}")
            elif payment is None or payment["state"] != "CAPTURED":
                report.problems.append(
                    f"order {order_id} is CONFIRMED but its payment is"
                    f" {_shown(payment) if payment is not None else 'missing'}"
                )
            elif payment["amount_minor"] != total:
                report.problems.append(
                    f"order {order_id} totals {total} but {payment['amount_minor']} was captured"
                )
        elif state == "CANCELLED":
            if not order["cancel_reason"]:
                report.problems.append(f"order {order_id} is CANCELLED without a reason")
            if hold in ("HELD", "COMMITTED"):
                report.problems.append(f"order {order_id} is CANCELLED but its stock is {hold}")
            if payment is not None and payment["state"] in ("AUTHORIZED", "CAPTURED"):
                report.problems.append(
                    f"order {order_id} is CANCELLED but its payment is {_shown(payment)}"
                )
        else:
            report.problems.append(f"order {order_id} has an unknown state {state!r}")
    # Participants' records of orders the order service does not know (yet): in flight if
    # the order was made after the order snapshot; nothing else to say about them here.
    for order_id, payment in payments.items():
        if payment["state"] == "CAPTURED" and states.get(order_id) == "CANCELLED":
            report.problems.append(f"cancelled order {order_id} was charged")


def _check_logs(report: Report, ordered: dict[str, list[Row]]) -> None:
    """Replays each order's log and compares it with the order's row and saga."""
    items: dict[str, list[Row]] = {}
    for item in ordered["items"]:
        items.setdefault(item["order_id"], []).append(item)
    logs: dict[str, list[envelope_pb2.EventEnvelope]] = {}
    for entry in ordered["log"]:
        envelope = envelope_pb2.EventEnvelope.FromString(bytes(entry["envelope"]))
        logs.setdefault(entry["order_id"], []).append(envelope)
    # No row (a database emptied by a test): every order has its whole life in the log.
    first_seq = ordered["log_start"][0]["first_seq"] if ordered["log_start"] else 1
    for row in ordered["orders"]:
        if row["seq"] < first_seq:
            report.counts["before the log"] += 1
            continue
        report.counts["logs replayed"] += 1
        report.problems += history.check_order(
            logs.pop(row["order_id"], []),
            history.order_of(row, items.get(row["order_id"], [])),
            Phase(row["phase"]),
            bool(row["cancel_requested"]),
        )
    for order_id in logs:
        report.problems.append(f"order {order_id} has a log but no row")


def _check_stock(report: Report, stock: dict[str, list[Row]]) -> None:
    held: Counter[str] = Counter()
    sold: Counter[str] = Counter()
    for item in stock["items"]:
        if item["state"] == "HELD":
            held[item["sku"]] += item["quantity"]
        elif item["state"] == "COMMITTED":
            sold[item["sku"]] += item["quantity"]
    for product in stock["products"]:
        report.counts["products"] += 1
        sku = product["sku"]
        if product["held"] != held[sku]:
            report.problems.append(
                f"{sku}: {product['held']} held, but HELD reservations add up to {held[sku]}"
            )
        if product["sold"] != sold[sku]:
            report.problems.append(
                f"{sku}: {product['sold']} sold, but COMMITTED reservations add up to {sold[sku]}"
            )
        if product["available"] < 0:
            report.problems.append(f"{sku}: {product['available']} available")


def _check_money(report: Report, money: dict[str, list[Row]]) -> None:
    held: Counter[str] = Counter()
    captured: Counter[str] = Counter()
    for payment in money["payments"]:
        if payment["state"] == "AUTHORIZED":
            held[payment["user_id"]] += payment["amount_minor"]
        elif payment["state"] == "CAPTURED":
            captured[payment["user_id"]] += payment["amount_minor"]
    for account in money["accounts"]:
        report.counts["accounts"] += 1
        user = account["user_id"]
        if account["held"] != held[user]:
            report.problems.append(
                f"account {user}: {account['held']} held, but AUTHORIZED payments add up to"
                f" {held[user]}"
            )
        if account["captured"] != captured[user]:
            report.problems.append(
                f"account {user}: {account['captured']} captured, but CAPTURED payments add"
                f" up to {captured[user]}"
            )


def _shown(payment: Any) -> str:
    return f"{payment['state']} ({payment['amount_minor']})"


EVENT_QUERIES = {
    "outbox": "SELECT count(*) AS pending FROM outbox WHERE sent_at IS NULL",
}


def consumers_lag(monitor_url: str) -> dict[str, int] | None:
    """Per durable consumer of the stream, its messages not delivered yet plus those
    delivered and not acked (the NATS server's `/jsz` at `monitor_url`); None while the
    server does not answer."""
    try:
        with urllib.request.urlopen(f"{monitor_url}/jsz?consumers=true", timeout=2) as got:
            info = json.loads(got.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    lag: dict[str, int] = {}
    for account in info.get("account_details", []):
        for stream in account.get("stream_detail", []):
            for consumer in stream.get("consumer_detail", []):
                lag[consumer["name"]] = consumer["num_pending"] + consumer["num_ack_pending"]
    return lag


def events_in_flight(databases: Mapping[str, Location], monitor_url: str) -> str:
    """What of the events still moves: unsent outbox rows, a consumer behind or not there
    yet, the server not answering; "" once quiet (`check_events` is meaningful then)."""
    moving = [
        f"{name} outbox {pending}"
        for name in ("order", "inventory", "payment")
        if (pending := _read(databases[name], **EVENT_QUERIES)["outbox"][0]["pending"])
    ]
    lag = consumers_lag(monitor_url)
    if lag is None:
        moving.append(f"NATS monitoring at {monitor_url} not answering")
    else:
        moving += [
            f"{name} {lag[name]} behind" if name in lag else f"no {name} consumer"
            for name in EVENT_CONSUMERS
            if lag.get(name, 1)
        ]
    return ", ".join(moving)


def wait_for_quiet(
    databases: Mapping[str, Location], monitor_url: str, timeout: float = QUIET_SECONDS
) -> str:
    """Waits, at most `timeout` seconds, until the events are quiet; "" then, else what was
    still in flight at the end."""
    deadline = time.monotonic() + timeout
    while in_flight := events_in_flight(databases, monitor_url):
        if time.monotonic() > deadline:
            return in_flight
        time.sleep(0.1)
    return ""


def check_events(databases: Mapping[str, Location], maildir: pathlib.Path | None = None) -> Report:
    """The events' promises once quiet (docs/events-delivery.md): every event of every
    producing outbox is sent; every CONFIRMED or CANCELLED order has exactly one
    notification record and, with `maildir`, at least one message there, more than one
    only with the same Message-ID (counted as `mail copies`); the read model's revenue is
    the sum of the confirmed orders' totals and its units per SKU inventory's sold
    counts. Only meaningful with nothing in flight: the caller waits for quiet first."""
    report = Report()
    for name in ("order", "inventory", "payment"):
        pending = _read(databases[name], **EVENT_QUERIES)["outbox"][0]["pending"]
        if pending:
            report.problems.append(f"{name}: {pending} events in the outbox not sent")
    orders = _read(
        databases["order"],
        orders="SELECT order_id, state, total_minor FROM orders"
        " WHERE state IN ('CONFIRMED', 'CANCELLED')",
    )["orders"]
    told = _read(
        databases["notification"],
        rows="SELECT order_id, message_id FROM notifications",
    )["rows"]
    records = Counter(r["order_id"] for r in told)
    message_of = {r["order_id"]: r["message_id"] for r in told}
    mail = _maildir_ids(maildir) if maildir is not None else None
    for order in orders:
        order_id = order["order_id"]
        report.counts["final orders"] += 1
        if records[order_id] != 1:
            report.problems.append(
                f"order {order_id} ({order['state']}) has {records[order_id]} notification"
                " records, not 1"
            )
        elif mail is not None:
            copies = mail[message_of[order_id]]
            if copies == 0:
                report.problems.append(f"order {order_id}: no message in the Maildir")
            report.counts["mail copies"] += max(0, copies - 1)
    if mail is not None:
        known = set(message_of.values())
        strays = [m for m in mail if m not in known]
        if strays:
            report.problems.append(f"{len(strays)} Maildir messages of no notification record")
    model = _read(
        databases["reporting"],
        revenue="SELECT COALESCE(SUM(revenue_minor), 0) AS total FROM day_revenue",
        units="SELECT sku, SUM(units) AS units FROM product_sales GROUP BY sku",
    )
    revenue = sum(o["total_minor"] or 0 for o in orders if o["state"] == "CONFIRMED")
    if model["revenue"][0]["total"] != revenue:
        report.problems.append(
            f"read model revenue {model['revenue'][0]['total']}, confirmed orders total {revenue}"
        )
    units = {r["sku"]: r["units"] for r in model["units"]}
    sold = _read(databases["inventory"], sold="SELECT sku, sold FROM products")["sold"]
    for product in sold:
        if units.get(product["sku"], 0) != product["sold"]:
            report.problems.append(
                f"{product['sku']}: read model {units.get(product['sku'], 0)} units sold,"
                f" inventory {product['sold']}"
            )
    return report


def _maildir_ids(maildir: pathlib.Path) -> Counter[str]:
    """How many messages of each Message-ID the Maildir holds."""
    found: Counter[str] = Counter()
    if not maildir.exists():
        return found
    for message in mailbox.Maildir(maildir, create=False):
        found[str(message["Message-ID"])] += 1
    return found
