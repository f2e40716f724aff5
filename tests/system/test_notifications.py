"""The notification service in the whole system (`shopmesh run`'s parts: NATS, the SMTP
sink writing a Maildir, Consul, Envoy with JWT): an order placed through Envoy's REST API
(confirmed, or cancelled for want of money), or an outcome event published to SHOP_EVENTS,
ends as a message in the Maildir and in the customer's `GET /v1/notifications`, and in
nobody else's."""

from __future__ import annotations

import asyncio

from services.common.jetstream import JetStreamSettings, open_publisher
from services.notification.domain import message_id
from shop.events.v1 import envelope_pb2
from shopmesh.system import System
from tests.helpers import wait_for
from tests.notification_helpers import confirmed, message_ids, messages
from tests.system_helpers import rest

WAIT_SECONDS = 20.0


def publish(system: System, *envelopes: envelope_pb2.EventEnvelope) -> None:
    """Publishes order outcome events to the system's NATS as the order service's relay
    does (subject = type, Nats-Msg-Id = event id)."""

    async def run() -> None:
        publisher = await open_publisher(JetStreamSettings(url=system.nats.url))
        try:
            assert await publisher.connection.wait_ready(WAIT_SECONDS)
            for e in envelopes:
                await publisher.publish(e.type, e.event_id, e.SerializeToString())
        finally:
            await publisher.close()

    asyncio.run(run())


def listed(system: System, token: str) -> list[dict[str, object]]:
    answer = rest(system, "GET", "/v1/notifications", token)
    assert answer.status == 200, answer.text
    return list(answer.body["notifications"])


def test_an_order_event_ends_in_the_maildir_and_in_the_customers_list_only(
    system: System,
) -> None:
    alice, bob = system.token("alice"), system.token("bob")
    event = confirmed("o-system-1", "alice", total_minor=900)
    publish(system, event)
    wait_for(
        lambda: message_id(event.event_id) in message_ids(system.maildir),
        "the message in the Maildir",
        WAIT_SECONDS,
    )
    [shown] = wait_for(
        lambda: [
            n
            for n in listed(system, alice)
            if n["orderId"] == "o-system-1" and n["state"] == "NOTIFICATION_STATE_SENT"
        ],
        "alice's notification SENT",
        WAIT_SECONDS,
    )
    assert shown["orderId"] == "o-system-1"
    assert shown["emailAddress"] == "alice@shopmesh.example"
    assert shown["messageId"] == message_id(event.event_id)
    assert shown["total"] == {"currencyCode": "USD", "amountMinor": "900"}
    assert "o-system-1" not in [n["orderId"] for n in listed(system, bob)]
    assert rest(system, "GET", "/v1/notifications").status == 401  # no token


def test_a_user_sets_their_address_over_rest(system: System) -> None:
    carol = system.token("carol")
    changed = rest(
        system,
        "PUT",
        "/v1/notifications/contact",
        carol,
        body={"emailAddress": "carol@elsewhere.example"},
    )
    assert changed.status == 200, changed.text
    got = rest(system, "GET", "/v1/notifications/contact", carol)
    assert got.body["contactAddress"]["emailAddress"] == "carol@elsewhere.example"
    refused = rest(system, "PUT", "/v1/notifications/contact", carol, body={"emailAddress": "nope"})
    assert refused.status == 400


def test_orders_through_envoy_rest_end_with_a_message_each_in_the_maildir(
    system: System,
) -> None:
    alice, bob = system.token("alice"), system.token("bob")
    placed = rest(
        system,
        "POST",
        "/v1/orders",
        alice,
        body={"request_id": "notify-1", "line_items": [{"sku": "SKU-TEA", "quantity": 1}]},
    )
    assert placed.status == 200, placed.text
    confirmed_id = placed.body["order"]["orderId"]
    # Bob cannot pay for it: the order is cancelled (INSUFFICIENT_FUNDS) and he is told.
    refused = rest(
        system,
        "POST",
        "/v1/orders",
        bob,
        body={"request_id": "notify-2", "line_items": [{"sku": "SKU-LAST", "quantity": 1}]},
    )
    assert refused.status != 200, refused.text
    [alices] = wait_for(
        lambda: [
            n
            for n in listed(system, alice)
            if n["orderId"] == confirmed_id and n["state"] == "NOTIFICATION_STATE_SENT"
        ],
        "alice's order notification SENT",
        WAIT_SECONDS,
    )
    [bobs] = wait_for(
        lambda: [n for n in listed(system, bob) if n["state"] == "NOTIFICATION_STATE_SENT"],
        "bob's cancelled order notification SENT",
        WAIT_SECONDS,
    )
    assert (alices["orderState"], bobs["orderState"]) == ("CONFIRMED", "CANCELLED")
    assert bobs["cancelReason"] == "INSUFFICIENT_FUNDS"
    assert confirmed_id not in [n["orderId"] for n in listed(system, bob)]
    by_id = {str(m["Message-ID"]): m for m in messages(system.maildir)}
    mail = by_id[str(alices["messageId"])]
    assert mail["To"] == "alice@shopmesh.example"
    assert f"Order: {confirmed_id}" in mail.get_payload()
    assert "State: CONFIRMED" in mail.get_payload() and "4.50 USD" in mail.get_payload()
    assert "Reason: INSUFFICIENT_FUNDS" in by_id[str(bobs["messageId"])].get_payload()
