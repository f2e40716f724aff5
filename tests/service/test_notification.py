"""The notification service as a process, against the real nats-server (JetStream) and
the SMTP sink as a process writing a Maildir: order outcome events published to
SHOP_EVENTS end as one record each and one message each with the event's Message-ID,
through redelivery, a kill between send and mark, poison, a newer contract's types and a
user without an address."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from services.common.jetstream import JetStreamSettings, open_publisher
from services.notification.domain import message_id
from services.notification.service import CRASH_EXIT_CODE
from shop.events.v1 import envelope_pb2
from shop.notification.v1 import notification_pb2 as pb
from shop.notification.v1 import notification_service_pb2 as rpc
from shop.notification.v1.notification_service_pb2_grpc import NotificationServiceStub
from shopmesh.nats_server import NatsServer
from shopmesh.processes import ServiceProcess, spawn_service
from tests.helpers import user, wait_for
from tests.nats_harness import running_nats
from tests.notification_helpers import (
    cancelled,
    confirmed,
    from_newer_contract,
    message_ids,
    running_sink,
)
from tests.stack import restart, start_service

DEMO_DATA = pathlib.Path("services/demo_data.json").resolve()
WAIT_SECONDS = 20.0
ACK_WAIT_SECONDS = 2.0
"""The consumer's ack wait here: a message a killed consumer left unacked comes back after it."""


@dataclass
class Rig:
    workdir: pathlib.Path
    nats: NatsServer
    sink: ServiceProcess
    maildir: pathlib.Path

    def start(self, instance: int = 1, **settings: str) -> ServiceProcess:
        flags = {
            "nats_url": self.nats.url,
            "smtp": self.sink.target,
            "seed_file": str(DEMO_DATA),
            "consumer_ack_wait_seconds": str(ACK_WAIT_SECONDS),
            "send_retry_first_seconds": "0.2",
            **settings,
        }
        if instance == 1:
            return start_service("notification", self.workdir, settings=flags)
        # Another instance on the same database and the same durable consumer.
        flags["db_path"] = str(self.workdir / "notification.db")
        return spawn_service("notification", self.workdir, settings=flags, instance=instance)

    def publish(self, *envelopes: envelope_pb2.EventEnvelope | tuple[str, str, bytes]) -> None:
        """Each envelope on its type's subject with Nats-Msg-Id = its event id, or a raw
        (subject, msg id, data) as given."""

        async def publish() -> None:
            publisher = await open_publisher(JetStreamSettings(url=self.nats.url))
            try:
                assert await publisher.connection.wait_ready(WAIT_SECONDS)
                for e in envelopes:
                    if isinstance(e, tuple):
                        await publisher.publish(*e)
                    else:
                        await publisher.publish(e.type, e.event_id, e.SerializeToString())
            finally:
                await publisher.close()

        asyncio.run(publish())


@pytest.fixture
def rig(tmp_path: pathlib.Path) -> Iterator[Rig]:
    maildir = tmp_path / "mail"
    with running_nats(tmp_path) as nats, running_sink(tmp_path, maildir) as sink:
        yield Rig(tmp_path, nats, sink, maildir)


@contextlib.contextmanager
def running(service: ServiceProcess) -> Iterator[ServiceProcess]:
    try:
        yield service
    finally:
        service.stop()


def notifications(service: ServiceProcess, user_id: str) -> list[pb.Notification]:
    with grpc.insecure_channel(service.target) as channel:
        reply = NotificationServiceStub(channel).ListNotifications(
            rpc.ListNotificationsRequest(page_size=100), metadata=user(user_id), timeout=5
        )
    return list(reply.notifications)


def settled(service: ServiceProcess, user_id: str, count: int) -> list[pb.Notification]:
    """The user's notifications once `count` of them are no longer PENDING."""

    def done() -> list[pb.Notification] | None:
        found = notifications(service, user_id)
        final = [n for n in found if n.state != pb.NOTIFICATION_STATE_PENDING]
        return found if len(final) >= count else None

    return wait_for(done, f"{count} settled notifications of {user_id}", WAIT_SECONDS)


def mail_ids(rig: Rig, count: int) -> list[str]:
    """The Maildir's Message-IDs, sorted, once it holds `count` messages."""

    def enough() -> list[str] | None:
        ids = message_ids(rig.maildir)
        return ids if len(ids) >= count else None

    return wait_for(enough, f"{count} messages in {rig.maildir}", WAIT_SECONDS)


def test_a_confirmed_and_a_cancelled_order_give_one_record_and_one_message_each(
    rig: Rig,
) -> None:
    ok, no = confirmed("o-1", "alice", total_minor=900), cancelled("o-2", "alice")
    with running(rig.start()) as service:
        rig.publish(ok, no)
        found = settled(service, "alice", 2)
        assert sorted((n.order_id, n.state) for n in found) == [
            ("o-1", pb.NOTIFICATION_STATE_SENT),
            ("o-2", pb.NOTIFICATION_STATE_SENT),
        ]
        assert mail_ids(rig, 2) == sorted([message_id(ok.event_id), message_id(no.event_id)])


def test_a_redelivered_event_gives_no_second_record_and_no_second_message(rig: Rig) -> None:
    event = confirmed("o-1", "alice")
    again = (event.type, "another-msg-id", event.SerializeToString())  # stored twice
    later = confirmed("o-2", "alice")
    with running(rig.start()) as service:
        rig.publish(event, again, later)
        found = settled(service, "alice", 2)
        assert sorted(n.order_id for n in found) == ["o-1", "o-2"]
        assert mail_ids(rig, 2) == sorted([message_id(event.event_id), message_id(later.event_id)])


def test_a_consumer_killed_between_send_and_mark_sends_a_copy_with_the_same_message_id(
    rig: Rig,
) -> None:
    event = confirmed("o-1", "alice")
    crashing = rig.start(exit_after_sends="1")
    rig.publish(event)
    crashing.wait_until(lambda: not crashing.running(), "the crash after the send", WAIT_SECONDS)
    assert crashing.process.returncode == CRASH_EXIT_CODE
    assert message_ids(rig.maildir) == [message_id(event.event_id)]
    with running(restart(crashing, exit_after_sends="0")) as service:
        [record] = settled(service, "alice", 1)
        assert (record.state, record.attempts) == (pb.NOTIFICATION_STATE_SENT, 2)
        assert mail_ids(rig, 2) == [message_id(event.event_id)] * 2


def test_a_poison_message_is_parked_and_the_next_event_still_goes_through(rig: Rig) -> None:
    after = confirmed("o-1", "alice")
    with running(rig.start()) as service:
        rig.publish(("shop.order.v1.OrderConfirmed", "poison-1", b"\xff\xff not protobuf"), after)
        [record] = settled(service, "alice", 1)
        assert record.order_id == "o-1"
        assert mail_ids(rig, 1) == [message_id(after.event_id)]
        log = service.log_path.read_text()
        assert "parked message poison-1 on shop.order.v1.OrderConfirmed" in log


def test_an_unknown_event_type_from_a_newer_contract_is_skipped_and_counted(rig: Rig) -> None:
    unknown, newer = from_newer_contract("o-1")
    with running(rig.start()) as service:
        rig.publish(unknown, newer)
        [record] = settled(service, "alice", 1)
        assert record.event_id == newer.event_id
        log = service.log_path.read_text()
        assert "skipping events of type shop.order.v2.OrderGiftWrapped" in log
        assert "parked" not in log


def test_a_user_without_an_address_is_recorded_undeliverable_and_sent_nothing(rig: Rig) -> None:
    nobody, somebody = confirmed("o-1", "dave"), confirmed("o-2", "alice")
    with running(rig.start()) as service:
        rig.publish(nobody, somebody)
        [record] = settled(service, "dave", 1)
        assert (record.state, record.email_address) == (pb.NOTIFICATION_STATE_UNDELIVERABLE, "")
        settled(service, "alice", 1)
        assert mail_ids(rig, 1) == [message_id(somebody.event_id)]


def test_smtp_down_is_retried_with_a_delay_and_sent_once_it_is_back(rig: Rig) -> None:
    event = confirmed("o-1", "alice")
    with running(rig.start(send_retry_first_seconds="0.3")) as service:
        rig.sink.stop()
        rig.publish(event)
        wait_for(
            lambda: [n for n in notifications(service, "alice") if n.attempts >= 2],
            "two failed attempts",
            WAIT_SECONDS,
        )
        [pending] = notifications(service, "alice")
        assert pending.state == pb.NOTIFICATION_STATE_PENDING
        rig.sink.start().wait_ready()  # on the port it had
        [record] = settled(service, "alice", 1)
        assert record.state == pb.NOTIFICATION_STATE_SENT and record.attempts >= 3
        assert mail_ids(rig, 1) == [message_id(event.event_id)]


def test_smtp_down_for_every_attempt_allowed_records_failed_and_moves_on(rig: Rig) -> None:
    event, later = confirmed("o-1", "alice"), confirmed("o-2", "bob")
    with running(rig.start(send_max_attempts="3", send_retry_first_seconds="0.2")) as service:
        rig.sink.stop()
        rig.publish(event)
        [record] = settled(service, "alice", 1)
        assert (record.state, record.attempts) == (pb.NOTIFICATION_STATE_FAILED, 3)
        rig.sink.start().wait_ready()
        rig.publish(later)
        settled(service, "bob", 1)
        assert mail_ids(rig, 1) == [message_id(later.event_id)]  # the failed one stays failed
        assert "gave up on" in service.log_path.read_text()


def test_two_instances_on_one_durable_share_the_events_and_tell_each_order_once(
    rig: Rig,
) -> None:
    events = [confirmed(f"o-{n}", "alice") for n in range(20)]
    # One message a fetch, so that both instances' pull requests are served (which one
    # gets which message is the server's choice, so the test asserts only the outcome).
    one = {"consumer_batch_size": "1"}
    with running(rig.start(1, **one)) as first, running(rig.start(2, **one).wait_ready()):
        rig.publish(*events)
        found = settled(first, "alice", len(events))
        assert sorted(n.order_id for n in found) == sorted(e.aggregate_id for e in events)
        # No crash, so no copy: each order's message exactly once.
        assert mail_ids(rig, len(events)) == sorted(message_id(e.event_id) for e in events)
