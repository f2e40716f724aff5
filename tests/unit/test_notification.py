"""The notification service in this process: its store on either backend (`open_store`),
its consumer fed from a list (no NATS) sending through a real SMTP sink on this event
loop (aiosmtpd, port 0) into a Maildir, and its RPCs over a real server (port 0)."""

from __future__ import annotations

import dataclasses
import pathlib
import smtplib
import socket
from collections.abc import AsyncIterator, Sequence
from email.message import EmailMessage

import grpc
import pytest

from services.notification.config import NotificationConfig
from services.notification.consumer import (
    ConsumerSettings,
    NotificationConsumer,
)
from services.notification.domain import Notification, NotificationState, Outcome, message_id
from services.notification.mailer import SmtpMailer
from services.notification.service import create as create_notification
from services.notification.store import NotificationStore
from shop.events.v1 import envelope_pb2
from shop.notification.v1 import notification_pb2 as pb
from shop.notification.v1 import notification_service_pb2 as rpc
from shop.notification.v1.notification_service_pb2_grpc import NotificationServiceStub
from shop.order.v1 import order_events_pb2
from shopmesh.smtp_sink import start_sink
from tests.helpers import rejected, serving, user
from tests.notification_helpers import (
    cancelled,
    confirmed,
    from_newer_contract,
    message_ids,
    messages,
    wrap,
)
from tests.stores import StoreOpener


@dataclasses.dataclass
class FakeDelivery:
    """A delivered message that records how it was settled."""

    data: bytes
    subject: str = "shop.order.v1.OrderConfirmed"
    msg_id: str = ""
    settled: list[str] = dataclasses.field(default_factory=list)
    nak_delays: list[float | None] = dataclasses.field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay_seconds: float | None = None) -> None:
        self.settled.append("nak")
        self.nak_delays.append(delay_seconds)

    async def term(self) -> None:
        self.settled.append("term")


class ListSource:
    """Hands out what the test queued, one batch per fetch."""

    def __init__(self) -> None:
        self.queued: list[FakeDelivery] = []

    def publish(self, envelope: envelope_pb2.EventEnvelope) -> FakeDelivery:
        delivery = FakeDelivery(envelope.SerializeToString(), envelope.type, envelope.event_id)
        self.queued.append(delivery)
        return delivery

    async def fetch(self, batch: int, wait_seconds: float) -> Sequence[FakeDelivery]:
        taken, self.queued = self.queued[:batch], self.queued[batch:]
        return taken


@dataclasses.dataclass
class Sink:
    port: int
    maildir: pathlib.Path


@pytest.fixture
async def sink(tmp_path: pathlib.Path) -> AsyncIterator[Sink]:
    """A real SMTP server on this event loop delivering into tmp_path/mail."""
    server, port = await start_sink(tmp_path / "mail")
    try:
        yield Sink(port, tmp_path / "mail")
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def store(open_store: StoreOpener) -> NotificationStore:
    store = await open_store(NotificationStore)
    await store.set_contact("alice", "alice@shopmesh.example")
    return store


def consumer_for(
    store: NotificationStore, source: ListSource, port: int, **settings: object
) -> NotificationConsumer:
    return NotificationConsumer(
        store,
        source,
        SmtpMailer("127.0.0.1", port, timeout_seconds=5.0),
        ConsumerSettings(**settings),  # type: ignore[arg-type]
    )


def outcome(order_id: str, user_id: str = "alice", event_id: str = "") -> Outcome:
    return Outcome(event_id or f"ev-{order_id}", order_id, user_id, "CONFIRMED", 450, "USD")


# The store --------------------------------------------------------------------------


async def test_a_redelivered_event_finds_its_record_and_makes_no_second(
    store: NotificationStore,
) -> None:
    first, created = await store.record(outcome("o-1"))
    again, created_again = await store.record(outcome("o-1"))
    assert (created, created_again) == (True, False)
    assert again == first
    assert first.state is NotificationState.PENDING
    assert first.email_address == "alice@shopmesh.example"
    assert first.message_id == message_id("ev-o-1") == "<ev-o-1@notification.shopmesh>"
    assert len(await store.all_notifications()) == 1


async def test_a_second_event_of_one_orders_outcome_makes_no_second_record(
    store: NotificationStore,
) -> None:
    await store.record(outcome("o-1", event_id="ev-a"))
    found, created = await store.record(outcome("o-1", event_id="ev-b"))
    assert not created and found.outcome.event_id == "ev-a"
    assert len(await store.all_notifications()) == 1


async def test_a_user_without_an_address_is_recorded_undeliverable(
    store: NotificationStore,
) -> None:
    found, created = await store.record(outcome("o-2", user_id="dave"))
    assert created and found.state is NotificationState.UNDELIVERABLE
    assert found.email_address == ""


async def test_a_notification_leaves_pending_once_and_never_comes_back(
    store: NotificationStore,
) -> None:
    await store.record(outcome("o-1"))
    assert await store.begin_attempt("ev-o-1") == 1
    assert await store.begin_attempt("ev-o-1") == 2
    assert await store.finish("ev-o-1", NotificationState.SENT)
    assert not await store.finish("ev-o-1", NotificationState.FAILED)
    assert await store.begin_attempt("ev-o-1") == 0
    found = await store.notification("ev-o-1")
    assert found is not None and (found.state, found.attempts) == (NotificationState.SENT, 2)


async def test_setting_an_address_again_changes_nothing_and_a_new_one_wins(
    store: NotificationStore,
) -> None:
    first = await store.set_contact("bob", "bob@a.example", now=100.0)
    same = await store.set_contact("bob", "bob@a.example", now=200.0)
    assert same == first
    changed = await store.set_contact("bob", "bob@b.example", now=300.0)
    assert (changed.email_address, changed.updated_at) == ("bob@b.example", 300.0)


async def test_seeding_sets_the_demo_users_addresses_and_keeps_ones_set(
    store: NotificationStore,
) -> None:
    added = await store.seed(pathlib.Path("services/demo_data.json"))
    assert added == 2  # bob and carol; alice had one already, which is kept
    assert (await store.contact("alice")).email_address == "alice@shopmesh.example"
    assert (await store.contact("carol")).email_address == "carol@shopmesh.example"


# The consumer -----------------------------------------------------------------------


async def test_a_confirmed_and_a_cancelled_order_each_get_one_record_and_one_message(
    store: NotificationStore, sink: Sink
) -> None:
    source = ListSource()
    ok = source.publish(confirmed("o-1", "alice", total_minor=1749))
    no = source.publish(cancelled("o-2", "alice", reason="INSUFFICIENT_FUNDS"))
    consumer = consumer_for(store, source, sink.port)
    await consumer.drain()
    assert (ok.settled, no.settled) == (["ack"], ["ack"])
    records = await store.all_notifications()
    assert [(r.outcome.order_id, r.state) for r in records] == [
        ("o-1", NotificationState.SENT),
        ("o-2", NotificationState.SENT),
    ]
    by_id = {str(m["Message-ID"]): m for m in messages(sink.maildir)}
    assert sorted(by_id) == sorted(r.message_id for r in records)
    sent_ok = by_id[records[0].message_id]
    body_ok = sent_ok.get_payload()
    assert sent_ok["To"] == "alice@shopmesh.example"
    assert "Order: o-1" in body_ok and "State: CONFIRMED" in body_ok and "17.49 USD" in body_ok
    body_no = by_id[records[1].message_id].get_payload()
    assert "State: CANCELLED" in body_no and "Reason: INSUFFICIENT_FUNDS" in body_no
    assert consumer.counts.sent == 2


async def test_a_redelivered_event_sends_nothing_more_and_is_acked(
    store: NotificationStore, sink: Sink
) -> None:
    source = ListSource()
    event = confirmed("o-1", "alice")
    source.publish(event)
    consumer = consumer_for(store, source, sink.port)
    await consumer.drain()
    again = source.publish(event)
    await consumer.drain()
    assert again.settled == ["ack"]
    assert len(await store.all_notifications()) == 1
    assert len(messages(sink.maildir)) == 1
    assert consumer.counts.already_done == 1


async def test_a_crash_between_send_and_mark_sends_a_second_copy_with_the_same_message_id(
    store: NotificationStore, sink: Sink
) -> None:
    class Crash(Exception):
        pass

    def crash(notification: Notification) -> None:
        raise Crash

    source = ListSource()
    event = confirmed("o-1", "alice")
    first = source.publish(event)
    crashing = NotificationConsumer(
        store, source, SmtpMailer("127.0.0.1", sink.port), ConsumerSettings(), after_send=crash
    )
    with pytest.raises(Crash):
        await crashing.drain()
    assert first.settled == []  # neither marked nor acked: the server redelivers it
    # The process that comes up next gets the redelivery.
    source.publish(event)
    await consumer_for(store, source, sink.port).drain()
    records = await store.all_notifications()
    assert [(r.state, r.attempts) for r in records] == [(NotificationState.SENT, 2)]
    assert message_ids(sink.maildir) == [records[0].message_id] * 2


async def test_a_poison_message_is_parked_and_the_next_event_still_goes_through(
    store: NotificationStore, sink: Sink
) -> None:
    source = ListSource()
    garbage = FakeDelivery(b"\xff\xff\xff not protobuf", msg_id="poison-1")
    source.queued.append(garbage)
    bad_payload = confirmed("o-9", "alice")
    bad_payload.payload = b"\xff\xff"
    bad = source.publish(bad_payload)
    good = source.publish(confirmed("o-1", "alice"))
    consumer = consumer_for(store, source, sink.port)
    await consumer.drain()
    assert (garbage.settled, bad.settled, good.settled) == (["term"], ["term"], ["ack"])
    assert consumer.counts.parked == 2
    assert [r.outcome.order_id for r in await store.all_notifications()] == ["o-1"]
    assert len(messages(sink.maildir)) == 1


async def test_events_of_other_types_and_of_a_newer_contract_are_skipped_and_counted(
    store: NotificationStore, sink: Sink
) -> None:
    source = ListSource()
    placed = source.publish(wrap(order_events_pb2.OrderPlaced(order_id="o-1", user_id="alice")))
    unknown, newer_confirmed = from_newer_contract("o-1")
    skipped = source.publish(unknown)
    known = source.publish(newer_confirmed)
    consumer = consumer_for(store, source, sink.port)
    await consumer.drain()
    assert (placed.settled, skipped.settled, known.settled) == (["ack"], ["ack"], ["ack"])
    assert consumer.counts.skipped == {
        "shop.order.v1.OrderPlaced": 1,
        "shop.order.v2.OrderGiftWrapped": 1,
    }
    assert consumer.counts.parked == 0
    # The confirmed fact with a field this build does not know is still told.
    assert [r.state for r in await store.all_notifications()] == [NotificationState.SENT]


async def test_a_user_without_an_address_is_undeliverable_and_acked_without_a_send(
    store: NotificationStore, sink: Sink
) -> None:
    source = ListSource()
    delivery = source.publish(confirmed("o-1", "dave"))
    consumer = consumer_for(store, source, sink.port)
    await consumer.drain()
    assert delivery.settled == ["ack"]
    assert [r.state for r in await store.all_notifications()] == [NotificationState.UNDELIVERABLE]
    assert messages(sink.maildir) == []
    assert consumer.counts.undeliverable == 1


async def test_smtp_down_naks_with_growing_delays_then_records_failed(
    store: NotificationStore, sink: Sink
) -> None:
    class Down:
        async def send(self, message: EmailMessage) -> None:
            raise smtplib.SMTPServerDisconnected("connection refused")

    source = ListSource()
    event = confirmed("o-1", "alice")
    settings = ConsumerSettings(max_attempts=3, retry_first_seconds=0.5, retry_max_seconds=1.5)
    consumer = NotificationConsumer(store, source, Down(), settings)
    deliveries = []
    for _ in range(3):
        deliveries.append(source.publish(event))
        await consumer.drain()
    assert [d.settled for d in deliveries] == [["nak"], ["nak"], ["ack"]]
    assert [d.nak_delays for d in deliveries[:2]] == [[0.5], [1.0]]
    [record] = await store.all_notifications()
    assert (record.state, record.attempts) == (NotificationState.FAILED, 3)
    assert "connection refused" in record.last_error
    assert consumer.counts.failed == 1
    # A redelivery after that (an ack lost) sends nothing.
    source.publish(event)
    await consumer_for(store, source, sink.port).drain()
    assert messages(sink.maildir) == []


async def test_smtp_back_after_a_failure_sends_on_the_redelivery(
    store: NotificationStore, sink: Sink
) -> None:
    source = ListSource()
    event = confirmed("o-1", "alice")
    source.publish(event)
    closed_port = sink.port
    # Nothing listens on the sink's port + a socket we close: a refused connection.
    down = consumer_for(store, source, _closed_port())
    await down.drain()
    assert down.counts.retried == 1
    source.publish(event)
    await consumer_for(store, source, closed_port).drain()
    [record] = await store.all_notifications()
    assert (record.state, record.attempts) == (NotificationState.SENT, 2)
    assert message_ids(sink.maildir) == [record.message_id]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The RPCs ---------------------------------------------------------------------------


@pytest.fixture
async def notification(
    tmp_path: pathlib.Path,
) -> AsyncIterator[tuple[NotificationServiceStub, NotificationStore]]:
    config = NotificationConfig(db_path=tmp_path / "notification.db")
    service = await create_notification(config)
    async with serving(service) as served:
        yield NotificationServiceStub(served.channel), service.store


async def test_list_notifications_shows_the_callers_own_newest_first_in_pages(
    notification: tuple[NotificationServiceStub, NotificationStore],
) -> None:
    stub, store = notification
    await store.set_contact("alice", "alice@shopmesh.example")
    for n in range(3):
        await store.record(outcome(f"o-{n}"))
    await store.record(outcome("o-bob", user_id="bob"))
    first = await stub.ListNotifications(
        rpc.ListNotificationsRequest(page_size=2), metadata=user("alice")
    )
    assert [n.order_id for n in first.notifications] == ["o-2", "o-1"]
    assert first.notifications[0].state == pb.NOTIFICATION_STATE_PENDING
    assert first.notifications[0].total.amount_minor == 450
    rest = await stub.ListNotifications(
        rpc.ListNotificationsRequest(page_size=2, page_token=first.next_page_token),
        metadata=user("alice"),
    )
    assert [n.order_id for n in rest.notifications] == ["o-0"] and not rest.next_page_token
    bobs = await stub.ListNotifications(rpc.ListNotificationsRequest(), metadata=user("bob"))
    assert [n.order_id for n in bobs.notifications] == ["o-bob"]
    carols = await stub.ListNotifications(rpc.ListNotificationsRequest(), metadata=user("carol"))
    assert list(carols.notifications) == []


async def test_set_and_get_contact_address(
    notification: tuple[NotificationServiceStub, NotificationStore],
) -> None:
    stub, _ = notification
    missing = await rejected(
        stub.GetContactAddress(rpc.GetContactAddressRequest(), metadata=user("erin"))
    )
    assert (missing.code, missing.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "CONTACT_ADDRESS_NOT_FOUND",
    )
    set_ = await stub.SetContactAddress(
        rpc.SetContactAddressRequest(email_address="erin@shopmesh.example"), metadata=user("erin")
    )
    assert set_.contact_address.user_id == "erin"
    got = await stub.GetContactAddress(rpc.GetContactAddressRequest(), metadata=user("erin"))
    assert got.contact_address.email_address == "erin@shopmesh.example"
    bad = await rejected(
        stub.SetContactAddress(
            rpc.SetContactAddressRequest(email_address="not an address"), metadata=user("erin")
        )
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_call_with_no_user_is_refused(
    notification: tuple[NotificationServiceStub, NotificationStore],
) -> None:
    stub, _ = notification
    refused = await rejected(stub.ListNotifications(rpc.ListNotificationsRequest()))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED


def test_settings_refuse_a_bad_smtp_address_and_non_positive_retries() -> None:
    found = NotificationConfig(smtp="nohost", send_max_attempts=0).problems()
    assert "smtp must be host:port, got 'nohost'" in found
    assert "send_max_attempts must be > 0, got 0" in found
    assert NotificationConfig().problems() == []
    assert ConsumerSettings().retry_delay(1) == 2.0
    assert ConsumerSettings().retry_delay(9) == 300.0
