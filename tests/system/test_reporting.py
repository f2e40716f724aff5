"""The reporting service in the whole system, through Envoy's REST routes with an admin
token: after many orders (confirmed, and cancelled for want of stock or money) its units
sold per SKU equal inventory's sold counts, its revenue per day the confirmed orders'
totals, and each user's summary that user's orders;
a non-admin token gets 403; and `python -m services.reporting --rebuild` into a new
database, from the stream's start, makes the same tables as the live read model."""

from __future__ import annotations

import concurrent.futures
import datetime
import itertools
import pathlib
import sys
from collections.abc import Iterable
from typing import Any, cast

import pytest

from shopmesh.check import Location
from shopmesh.postgres import Cluster
from shopmesh.system import System, store_flags
from tests.helpers import PRODUCTS, run_command, wait_for
from tests.reporting_helpers import read_model_query
from tests.stack import read_rows
from tests.system_helpers import rest

ORDERS = 160
"""Orders placed: enough that the stock of SKU-MUG and SKU-LAST runs out, so that many are
cancelled."""
TABLES = (
    "applied_events",
    "product_names",
    "sku_day_sales",
    "product_sales",
    "day_revenue",
    "user_orders",
    "user_order_lines",
)
rebuilds = itertools.count(1)


def place(system: System, n: int) -> dict[str, Any]:
    # Cancelled for want of stock (SKU-NONE is not sold, SKU-LAST has one, SKU-MUG 25), not of
    # money: the order service refuses a user whose payments keep failing (a quota).
    sku = ("SKU-TEA", "SKU-MUG", "SKU-LAST", "SKU-NONE")[n % 4]
    user = "alice" if sku == "SKU-TEA" else "rich"
    body = {"request_id": f"report-{n}", "line_items": [{"sku": sku, "quantity": 1 + n % 2}]}
    answer = rest(system, "POST", "/v1/orders", system.token(user), body=body)
    if answer.status == 200:
        return {"order_id": answer.body["order"]["orderId"], "user": user}
    # Cancelled (out of stock, or of money): the error names the order.
    assert answer.status == 400, answer.text
    return {"order_id": answer.body["details"][0]["metadata"]["order_id"], "user": user}


def final(system: System, order: dict[str, Any]) -> dict[str, Any] | None:
    owner = system.token(str(order["user"]))
    got = rest(system, "GET", f"/v1/orders/{order['order_id']}", owner)
    state = got.body["order"]["state"]
    return got.body["order"] if state != "ORDER_STATE_PENDING" else None


def ended(system: System, order: dict[str, Any]) -> dict[str, Any]:
    return wait_for(lambda: final(system, order), "the order's saga ending")


def table(location: Location, name: str) -> list[tuple[Any, ...]]:
    rows = read_rows(location, read_model_query(name))
    return [tuple(cast(Iterable[Any], row)) for row in rows]


def caught_up(system: System, admin: str) -> dict[str, Any] | None:
    lag = rest(system, "GET", "/v1/reports/lag", admin).body
    if lag["streamReachable"] and lag["eventsBehind"] == "0" and lag["streamSequence"] != "0":
        return dict(lag)
    return None


def rebuild_database(
    request: pytest.FixtureRequest, backend: str, folder: pathlib.Path
) -> Location:
    if backend == "postgresql":
        cluster: Cluster = request.getfixturevalue("session_cluster")
        return cluster.service_database(f"reporting_rebuild_{next(rebuilds)}")
    return folder / "rebuilt-reporting.db"


def test_reports_match_the_orders_and_a_rebuild_matches_the_live_tables(
    system: System, request: pytest.FixtureRequest, backend: str, tmp_path: pathlib.Path
) -> None:
    admin = system.token("ops", "shop.admin")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        placed = list(pool.map(lambda n: place(system, n), range(ORDERS)))
    orders = [ended(system, o) for o in placed]
    confirmed = [o for o in orders if o["state"] == "ORDER_STATE_CONFIRMED"]
    cancelled = [o for o in orders if o["state"] == "ORDER_STATE_CANCELLED"]
    assert len(confirmed) >= 20 and len(cancelled) >= 20, (len(confirmed), len(cancelled))
    wait_for(lambda: caught_up(system, admin), "the read model catching up", timeout=60)

    top = rest(system, "GET", "/v1/reports/top-products?limit=100", admin)
    assert top.status == 200, top.text
    units = {p["sku"]: int(p["unitsSold"]) for p in top.body["products"]}
    names = {p["sku"]: p["productName"] for p in top.body["products"]}
    for sku in PRODUCTS:
        got = rest(system, "GET", f"/v1/products/{sku}", admin)
        if got.status == 404:  # not in the system's catalog: ordering it cancels the order
            assert sku not in units
            continue
        assert got.status == 200, got.text
        product = got.body["product"]
        assert units.get(sku, 0) == product["soldQuantity"], sku
        if sku in names:
            assert names[sku] == product["name"]
    revenue = sum(int(p["revenue"]["amountMinor"]) for p in top.body["products"])
    assert revenue == sum(int(o["total"]["amountMinor"]) for o in confirmed)

    # Revenue per UTC day, from OrderConfirmed: the confirmed orders' totals.
    today = datetime.datetime.now(datetime.UTC).date()
    days = f"start_day={today - datetime.timedelta(days=1)}&end_day={today}"
    daily = rest(system, "GET", f"/v1/reports/revenue?{days}", admin)
    assert daily.status == 200, daily.text
    assert sum(int(d["ordersConfirmed"]) for d in daily.body["days"]) == len(confirmed)
    assert sum(int(d["revenue"]["amountMinor"]) for d in daily.body["days"]) == revenue

    # A user's summary, with product names composed when the events arrived.
    for user in ("alice", "rich"):
        mine = [o for o in orders if o["userId"] == user]
        summary = rest(system, "GET", f"/v1/reports/users/{user}/orders?page_size=100", admin)
        assert summary.status == 200, summary.text
        body = summary.body
        assert int(body["ordersConfirmed"]) + int(body["ordersCancelled"]) == len(mine)
        assert body["ordersPending"] == "0"
        spent = sum(int(o["total"]["amountMinor"]) for o in mine if o in confirmed)
        assert sum(int(m["amountMinor"]) for m in body["spent"]) == spent
        lines = [line for order in body["orders"] for line in order["lines"]]
        assert lines and all(
            line["productName"] == names.get(line["sku"], line["productName"]) for line in lines
        )

    # Only an admin may read the reports.
    assert rest(system, "GET", "/v1/reports/lag", system.token("alice")).status == 403
    assert rest(system, "GET", "/v1/reports/top-products", None).status == 401

    # The rebuild, into a new database, from the stream's first event.
    target = rebuild_database(request, backend, tmp_path)
    flags = {
        **store_flags(target),
        "nats_url": system.nats.url,
        "inventory_target": f"127.0.0.1:{system.ports.internal}",
    }
    argv = [sys.executable, "-m", "services.reporting", "--rebuild"]
    for name, value in flags.items():
        argv += [f"--{name.replace('_', '-')}", value]
    run_command(argv, timeout=120)
    live = system.databases["reporting"]
    wait_for(lambda: caught_up(system, admin), "the read model catching up", timeout=60)
    for name in TABLES:
        assert table(target, name) == table(live, name), name
