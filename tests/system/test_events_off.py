"""The whole system with events off (`Settings.events`, `shopmesh run --no-events`: the
benchmark's baseline for what events cost): no NATS, SMTP sink, notification or
reporting runs, an order through Envoy is confirmed as ever, its log is kept (the order's
history is not a delivery) and no outbox row is written anywhere."""

from __future__ import annotations

import pathlib

import pytest

from tests.stack import read_rows
from tests.system_helpers import rest, start_test_system


def test_with_events_off_orders_are_served_logged_and_nothing_is_published(
    tmp_path: pathlib.Path,
) -> None:
    system = start_test_system(tmp_path, events=False)
    try:
        assert system.broker is None and system.smtp_sink is None
        assert system.notification == [] and system.reporting == []
        assert not (tmp_path / "nats").exists()
        token = system.token("alice")
        placed = rest(
            system,
            "POST",
            "/v1/orders",
            token,
            body={"request_id": "off-1", "line_items": [{"sku": "SKU-TEA", "quantity": 2}]},
        )
        assert placed.status == 200, placed.body
        order = placed.body["order"]
        assert order["state"] == "ORDER_STATE_CONFIRMED"
        timeline = rest(system, "GET", f"/v1/orders/{order['orderId']}/events", token)
        assert timeline.status == 200, timeline.body
        assert len(timeline.body["events"]) >= 2  # placed ... confirmed
        for name in ("order", "inventory", "payment"):
            outbox = read_rows(system.databases[name], "SELECT count(*) AS n FROM outbox")
            assert outbox[0]["n"] == 0, name
        with pytest.raises(RuntimeError, match="events off"):
            _ = system.nats
    finally:
        system.stop()
