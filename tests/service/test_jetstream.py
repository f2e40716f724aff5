"""services/common/jetstream.py against the real nats-server (2.9.10, shopmesh/nats_server.py):
the stream and a durable consumer are declared idempotently; a re-publish of a message id
inside the duplicates window is stored once; a publish while the server is down fails
within its timeout and works once it is back; acknowledged messages survive a kill -9; a
durable consumer survives a restart and redelivers what was not acked after ack_wait.

One server for the module (`nats`), restarted in place by the tests that need it (same
ports, same store); each test publishes on subjects of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from nats.js.api import StorageType

from services.common import outbox
from services.common.config import StoreConfig
from services.common.database import Tx
from services.common.jetstream import (
    STREAM,
    ConsumerSpec,
    Declared,
    Delivery,
    JetStreamConnection,
    JetStreamPublisher,
    JetStreamSettings,
    PublishError,
    PullConsumer,
    declare_consumer,
    declare_stream,
    open_publisher,
    with_jetstream,
)
from services.common.relay import Relay, RelaySettings
from services.inventory.store import InventoryStore
from shopmesh.nats_server import NatsServer
from tests.nats_harness import restart, running_nats

pytestmark = pytest.mark.alone(
    "publish timeouts and the duplicates window are asserted to 0.05-0.5 s"
)

READY_SECONDS = 10.0
PUBLISH_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with running_nats(tmp_path_factory.mktemp("nats")) as server:
        yield server


def settings_for(server: NatsServer, **changes: Any) -> JetStreamSettings:
    return dataclasses.replace(
        JetStreamSettings(url=server.url, publish_timeout_seconds=PUBLISH_TIMEOUT), **changes
    )


@pytest.fixture
async def connection(nats: NatsServer) -> AsyncIterator[JetStreamConnection]:
    """A ready connection to the module's server, with no consumer of its own."""
    connected = JetStreamConnection(settings_for(nats))
    await connected.start()
    assert await connected.wait_ready(READY_SECONDS)
    yield connected
    await connected.close()


def start(server: NatsServer) -> None:
    """Starts the server again and waits for JetStream. The tests run this (and restart)
    in a thread: on the event loop it would hold up the client, which must see the old
    connection close meanwhile, as it would with a server on its own."""
    server.start().wait_ready(READY_SECONDS)


def subject(name: str) -> str:
    """A subject no other test publishes on (the stream is the module's)."""
    return f"shop.test.v1.{name}{uuid.uuid4().hex[:8]}"


async def stored(connection: JetStreamConnection, on: str) -> int:
    """How many messages the stream holds on subject `on`."""
    info = await connection.js.stream_info(STREAM, subjects_filter=on)
    return (info.state.subjects or {}).get(on, 0)


def stopped(pid: int) -> bool:
    """Whether every thread of process `pid` is stopped (SIGSTOP reaches each in turn)."""
    tasks = pathlib.Path(f"/proc/{pid}/task").iterdir()
    return all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for task in tasks)


async def until(check: Callable[[], bool], wait_seconds: float = READY_SECONDS) -> None:
    """Polls `check` until it holds; fails the test after `wait_seconds`."""
    deadline = time.monotonic() + wait_seconds
    while not check():
        assert time.monotonic() < deadline, f"{check} did not come true"
        await asyncio.sleep(0.01)


async def until_stored(connection: JetStreamConnection, on: str, count: int) -> bool:
    """Whether the stream holds `count` messages on `on` within READY_SECONDS."""
    deadline = time.monotonic() + READY_SECONDS
    while await stored(connection, on) != count:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_the_stream_and_a_consumer_are_declared_once_and_again_change_nothing(
    nats: NatsServer,
) -> None:
    spec = ConsumerSpec("declared", filter_subject="shop.declared.>", ack_wait_seconds=7.0)
    first = JetStreamConnection(settings_for(nats), [spec])
    await first.start()
    assert await first.wait_ready(READY_SECONDS)
    js = first.js
    # From nothing: created, as the settings say.
    await js.delete_stream(STREAM)
    assert await declare_stream(js, first.settings) == Declared.CREATED
    assert await declare_consumer(js, spec) == Declared.CREATED
    info = await js.stream_info(STREAM)
    assert info.config.subjects == ["shop.>"]
    assert (info.config.storage, info.config.retention, info.config.discard) == (
        "file",
        "limits",
        "old",
    )
    assert info.config.duplicate_window == 120.0
    assert info.config.max_age == 30 * 86_400.0
    assert info.config.max_bytes == 1024**3
    consumer = await js.consumer_info(STREAM, "declared")
    assert (consumer.config.ack_wait, consumer.config.filter_subject) == (7.0, "shop.declared.>")
    assert (consumer.config.ack_policy, consumer.config.deliver_policy) == ("explicit", "all")

    # Again, and from a second connection (a second service, a restart): nothing changes.
    assert await declare_stream(js, first.settings) == Declared.UNCHANGED
    assert await declare_consumer(js, spec) == Declared.UNCHANGED
    second = JetStreamConnection(settings_for(nats), [spec])
    await second.start()
    assert await second.wait_ready(READY_SECONDS)
    again = await js.stream_info(STREAM)
    assert (again.created, again.config) == (info.created, info.config)
    assert (await js.consumer_info(STREAM, "declared")).created == consumer.created
    await second.close()

    # Other limits or another ack_wait: updated in place (a third start would be unchanged).
    longer = settings_for(nats, max_age_seconds=40 * 86_400.0)
    assert await declare_stream(js, longer) == Declared.UPDATED
    assert (await js.stream_info(STREAM)).config.max_age == 40 * 86_400.0
    assert await declare_stream(js, longer) == Declared.UNCHANGED
    slower = dataclasses.replace(spec, ack_wait_seconds=9.0)
    assert await declare_consumer(js, slower) == Declared.UPDATED
    assert (await js.consumer_info(STREAM, "declared")).config.ack_wait == 9.0
    assert await declare_stream(js, first.settings) == Declared.UPDATED  # back to the default
    await js.delete_consumer(STREAM, "declared")
    await first.close()


async def test_a_stream_the_server_will_not_change_keeps_the_connection_unready_not_down(
    nats: NatsServer, connection: JetStreamConnection, caplog: pytest.LogCaptureFixture
) -> None:
    """A SHOP_EVENTS in memory (made by hand, say): storage cannot be updated, so the
    declaration fails; the service logs it, refuses publishes and tries again, and is
    ready once the stream can be declared."""
    js = connection.js
    await js.delete_stream(STREAM)
    memory = dataclasses.replace(connection.settings.stream_config(), storage=StorageType.MEMORY)
    await js.add_stream(memory)
    blocked = JetStreamConnection(settings_for(nats))
    await blocked.start()
    assert not await blocked.wait_ready(1.0)
    assert "could not declare stream SHOP_EVENTS" in caplog.text
    with pytest.raises(PublishError):
        await JetStreamPublisher(blocked).publish(subject("Blocked"), "blocked", b"x")
    await js.delete_stream(STREAM)
    assert await blocked.wait_ready(READY_SECONDS)
    assert (await js.stream_info(STREAM)).config.storage == "file"
    await blocked.close()


async def test_a_message_published_twice_inside_the_window_is_stored_once(
    connection: JetStreamConnection,
) -> None:
    publisher = JetStreamPublisher(connection)
    on = subject("Twice")
    event_id = str(uuid.uuid4())
    await publisher.publish(on, event_id, b"first")
    await publisher.publish(on, event_id, b"first")  # a relay that crashed before its mark
    assert await stored(connection, on) == 1
    assert publisher.duplicates == 1
    await publisher.publish(on, str(uuid.uuid4()), b"second")  # another event: stored
    assert await stored(connection, on) == 2
    assert publisher.duplicates == 1


async def test_a_re_publish_after_the_duplicates_window_is_stored_again(
    nats: NatsServer, connection: JetStreamConnection
) -> None:
    """Why the relay's lease is far shorter than the window, and consumers dedup anyway:
    the server remembers an id only for the window (here set to 1 s)."""
    window = 1.0
    short = settings_for(nats, duplicate_window_seconds=window)
    assert await declare_stream(connection.js, short) == Declared.UPDATED
    try:
        publisher = JetStreamPublisher(connection)
        on, event_id = subject("Late"), str(uuid.uuid4())
        await publisher.publish(on, event_id, b"event")
        published = time.monotonic()
        # Published again and again, as a relay retrying would: dropped until the window
        # is over, then stored a second time.
        while await stored(connection, on) < 2:
            assert time.monotonic() - published < window + 5.0, "never stored again"
            await publisher.publish(on, event_id, b"event")
            await asyncio.sleep(0.05)
        assert time.monotonic() - published >= window - 0.05
        assert publisher.duplicates >= 1
    finally:
        assert await declare_stream(connection.js, connection.settings) == Declared.UPDATED


async def test_a_publish_to_a_hung_or_dead_server_fails_within_its_timeout_then_works(
    nats: NatsServer, connection: JetStreamConnection
) -> None:
    """As the outbox relay does: the same event published until it is acked. A publish
    that failed may still have been stored (sent, its ack lost): the re-publish is then
    dropped as a duplicate, so the event is stored once."""
    publisher = JetStreamPublisher(connection)
    on, event_id = subject("Down"), str(uuid.uuid4())
    # Hung (SIGSTOP): the connection looks up, nothing answers: it waits out the timeout.
    nats.signal(signal.SIGSTOP)
    try:
        await until(lambda: stopped(nats.pid))
        began = time.monotonic()
        with pytest.raises(PublishError, match="no PubAck"):
            await publisher.publish(on, event_id, b"event")
        assert PUBLISH_TIMEOUT - 0.05 <= time.monotonic() - began < PUBLISH_TIMEOUT + 0.5
    finally:
        nats.signal(signal.SIGCONT)
    # Going on, the server stores what it was sent; the ack comes too late for anyone.
    assert await until_stored(connection, on, 1)
    # Dead (kill -9): refused at once, however often.
    nats.kill()
    for _ in range(3):
        began = time.monotonic()
        with pytest.raises(PublishError):
            await publisher.publish(on, event_id, b"event")
        assert time.monotonic() - began < PUBLISH_TIMEOUT + 0.5
    await asyncio.to_thread(start, nats)
    assert await connection.wait_ready(READY_SECONDS)
    await publisher.publish(on, event_id, b"event")
    assert publisher.duplicates == 1  # the hung server's copy, kept across the kill
    assert await stored(connection, on) == 1


async def test_a_connection_started_while_nats_is_down_waits_and_comes_up_with_it(
    nats: NatsServer,
) -> None:
    nats.stop()
    began = time.monotonic()
    # Returns at once: a service starts without NATS.
    publisher = await open_publisher(settings_for(nats, reconnect_max_seconds=0.2))
    assert time.monotonic() - began < 0.5
    connection = publisher.connection
    assert not await connection.wait_ready(0.5)
    with pytest.raises(PublishError):
        await publisher.publish(subject("Early"), "early", b"x")
    await asyncio.to_thread(start, nats)
    assert await connection.wait_ready(READY_SECONDS)
    on = subject("Late")
    await publisher.publish(on, str(uuid.uuid4()), b"x")
    assert await stored(connection, on) == 1
    await publisher.close()
    assert connection.client.is_closed


async def test_acknowledged_messages_survive_a_kill_9_of_the_server(
    nats: NatsServer, connection: JetStreamConnection
) -> None:
    """Well inside the server's 2-minute fsync interval: what was acked was written to the
    OS before the ack, so a crash of the process alone loses none of it, and the
    duplicates window is rebuilt from the stored messages' ids."""
    publisher = JetStreamPublisher(connection)
    on = subject("Crash")
    ids = [str(uuid.uuid4()) for _ in range(200)]
    for event_id in ids:
        await publisher.publish(on, event_id, event_id.encode())
    await asyncio.to_thread(restart, nats, kill=True)
    assert await connection.wait_ready(READY_SECONDS)
    assert await stored(connection, on) == 200
    await publisher.publish(on, ids[-1], ids[-1].encode())
    assert publisher.duplicates == 1
    assert await stored(connection, on) == 200


async def test_a_durable_consumer_survives_a_restart_and_redelivers_what_was_not_acked(
    nats: NatsServer,
) -> None:
    ack_wait = 1.0
    spec = ConsumerSpec("redelivery", filter_subject="shop.redelivery.>", ack_wait_seconds=ack_wait)
    connection = JetStreamConnection(settings_for(nats), [spec])
    await connection.start()
    assert await connection.wait_ready(READY_SECONDS)
    with_consumer = connection.js
    await with_consumer.delete_consumer(STREAM, "redelivery")
    await declare_consumer(with_consumer, spec)
    publisher = JetStreamPublisher(connection)
    on = f"shop.redelivery.v1.Fact{uuid.uuid4().hex[:8]}"
    await publisher.publish(on, "acked", b"1")
    await publisher.publish(on, "unacked", b"2")
    consumer = PullConsumer(connection, "redelivery")
    first = await consumer.fetch(2, wait_seconds=5.0)
    delivered_at = time.monotonic()
    assert [(d.msg_id, d.deliveries) for d in first] == [("acked", 1), ("unacked", 1)]
    await first[0].ack()
    assert await consumer.fetch(2, wait_seconds=0.3) == []  # unacked, but ack_wait not over

    again = await consumer.fetch(2, wait_seconds=5.0)
    assert [(d.msg_id, d.deliveries) for d in again] == [("unacked", 2)]
    assert time.monotonic() - delivered_at >= ack_wait - 0.05

    # The server restarts (a clean stop: its consumer state is written at most 10 times a
    # second, unsynced, so a kill -9 can forget the last acks; see docs/events-delivery.md).
    await consumer.close()
    await connection.close()
    await asyncio.to_thread(restart, nats)
    connection = JetStreamConnection(settings_for(nats), [spec])
    await connection.start()
    assert await connection.wait_ready(READY_SECONDS)
    assert await declare_consumer(connection.js, spec) == Declared.UNCHANGED
    consumer = PullConsumer(connection, "redelivery")
    after = await consumer.fetch(2, wait_seconds=5.0)
    assert [(d.msg_id, d.deliveries) for d in after] == [("unacked", 3)]  # not "acked"
    await after[0].ack()
    assert await consumer.fetch(2, wait_seconds=ack_wait + 0.5) == []
    info = await connection.js.consumer_info(STREAM, "redelivery")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    await consumer.close()
    await connection.close()


def test_the_server_keeps_its_store_in_the_given_directory(nats: NatsServer) -> None:
    streams = nats.store_dir / "jetstream" / "$G" / "streams"
    assert (streams / STREAM).is_dir(), sorted(str(p) for p in nats.store_dir.rglob("*"))


async def test_terminated_messages_are_not_delivered_again(nats: NatsServer) -> None:
    spec = ConsumerSpec("poison", filter_subject="shop.poison.>", ack_wait_seconds=0.5)
    connection = JetStreamConnection(settings_for(nats), [spec])
    await connection.start()
    assert await connection.wait_ready(READY_SECONDS)
    await JetStreamPublisher(connection).publish("shop.poison.v1.Bad", "bad", b"?")
    await JetStreamPublisher(connection).publish("shop.poison.v1.Later", "later", b"!")
    consumer = PullConsumer(connection, "poison")
    got = await consumer.fetch(2, wait_seconds=5.0)
    assert [d.msg_id for d in got] == ["bad", "later"]
    await got[0].term()
    await got[1].nak(delay_seconds=0.2)
    again = await consumer.fetch(2, wait_seconds=5.0)
    assert [(d.msg_id, d.deliveries) for d in again] == [("later", 2)]
    await again[0].ack()
    assert await consumer.fetch(2, wait_seconds=1.0) == []
    await consumer.close()
    await connection.close()


async def test_with_jetstream_gives_a_service_publishers_on_its_stream_settings(
    nats: NatsServer, connection: JetStreamConnection
) -> None:
    """What a producing service's process runs: its `create` is handed a factory of
    publishers (the outbox relay's), each on a connection named after the service."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        jetstream: JetStreamSettings

    made: list[JetStreamPublisher] = []

    async def create(
        config: Config, publishers: Callable[[str], Awaitable[JetStreamPublisher]]
    ) -> str:
        made.append(await publishers(nats.url))
        return "service"

    created = with_jetstream(create, "inventory")
    assert created.__module__ == create.__module__  # server.main names the package by it
    assert await created(Config(settings_for(nats))) == "service"
    [publisher] = made
    assert publisher.connection.settings.name == "inventory"
    assert await publisher.connection.wait_ready(READY_SECONDS)
    on = subject("Made")
    await publisher.publish(on, str(uuid.uuid4()), b"x")
    assert await stored(connection, on) == 1
    await publisher.close()


async def test_a_relay_stores_each_aggregates_events_in_sequence_order_once(
    nats: NatsServer, tmp_path: pathlib.Path
) -> None:
    """The outbox relay (services/common/relay.py) on this server: 40 aggregates' three
    events each, committed interleaved, published a wave at a time (the aggregates'
    firsts at once, then their seconds...): the stream holds every event once, and each
    aggregate's in sequence order."""
    on = subject("Relayed")
    store = InventoryStore(tmp_path / "inventory.db")
    aggregates = [f"order-{n}" for n in range(40)]
    for _ in range(3):

        async def write(tx: Tx) -> None:
            for aggregate in aggregates:
                await outbox.append(
                    tx, aggregate_id=aggregate, subject=on, envelope_for=naming(aggregate)
                )

        await store.db.write(write)
    spec = ConsumerSpec(f"relayed-{uuid.uuid4().hex[:8]}", filter_subject=on)
    connection = JetStreamConnection(settings_for(nats), [spec])
    await connection.start()
    assert await connection.wait_ready(READY_SECONDS)
    publisher = JetStreamPublisher(connection)
    relay = Relay(store.outbox, publisher, RelaySettings.of(StoreConfig()), owner="test")
    try:
        steps = [await relay.step() for _ in range(2)]  # batches of 100
        assert steps[0] == (0.0, False) and await store.outbox.backlog() == outbox.Backlog(0, 0.0)
        consumer = PullConsumer(connection, spec.durable)
        got: list[Delivery] = []
        while len(got) < 120:
            fetched = await consumer.fetch(120, wait_seconds=5.0)
            assert fetched, f"the stream held {len(got)} of the 120 events"
            got += fetched
        by_aggregate: dict[str, list[int]] = {}
        for delivery in got:
            _, aggregate, sequence = delivery.data.decode().split("|")
            by_aggregate.setdefault(aggregate, []).append(int(sequence))
        assert by_aggregate == {aggregate: [1, 2, 3] for aggregate in aggregates}
        assert len({delivery.msg_id for delivery in got}) == 120 and publisher.duplicates == 0
        await consumer.close()
    finally:
        await relay.stop()
        await connection.close()
        store.close()


def naming(aggregate: str) -> outbox.EnvelopeFor:
    """What the relay test's events carry: enough to check their order in the stream."""
    return lambda event_id, sequence, occurred_at: f"{event_id}|{aggregate}|{sequence}".encode()
