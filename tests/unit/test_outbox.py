"""The transactional outbox and its relay (services/common/outbox.py, relay.py) on the
session's backend, with a publisher that records in place of JetStream: an event commits
with its change or not at all, sequences per aggregate, one publishing relay per outbox,
fencing, republishing after a crash, order under failures, pruning and draining. The
races of two connections on PostgreSQL are in tests/service/test_outbox_races.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.common import outbox
from services.common.config import ConfigError, StoreConfig, load
from services.common.database import Tx
from services.common.relay import Relay, RelaySettings, waves
from services.inventory.config import InventoryConfig
from services.inventory.service import create as create_inventory
from services.inventory.store import InventoryStore
from tests.outbox_helpers import (
    SETTINGS,
    SUBJECT,
    FakePublisher,
    append,
    envelope,
    events,
    expire_lease,
)
from tests.stores import StoreOpener, rows


class Failed(Exception):
    """A store's own error after its statements ran (as OUT_OF_STOCK would be)."""


class Killed(BaseException):
    """The process dies here: nothing after this point runs."""


async def until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def relay(store: InventoryStore, publisher: FakePublisher, owner: str, **changes: object) -> Relay:
    settings = dataclasses.replace(SETTINGS, **changes)  # type: ignore[arg-type]
    return Relay(outbox.Outbox(store.db), publisher, settings, owner=owner)


@contextlib.asynccontextmanager
async def leased(
    store: InventoryStore, publisher: FakePublisher, **changes: object
) -> AsyncIterator[Relay]:
    """A relay (settings as `relay`'s), started and holding its lease; stopped after."""
    running = relay(store, publisher, "one", **changes)
    running.start()
    try:
        await until(lambda: running.lease is not None, "the relay to take its lease")
        yield running
    finally:
        await running.stop()


async def products(store: InventoryStore) -> list[str]:
    return [str(sku) for (sku,) in await rows(store, "SELECT sku FROM products ORDER BY sku")]


def change_and_event(sku: str, fail: bool = False) -> Callable[[Tx], Awaitable[outbox.Appended]]:
    """A write that changes state (adds a product) and appends its event; `fail` raises
    after both."""

    async def write(tx: Tx) -> outbox.Appended:
        await tx.execute(
            "INSERT INTO products (sku, name, price_minor, currency, available)"
            " VALUES (?, ?, 100, 'EUR', 1)",
            (sku, sku),
        )
        appended = await outbox.append(tx, aggregate_id=sku, subject=SUBJECT, envelope_for=envelope)
        if fail:
            raise Failed(sku)
        return appended

    return write


async def test_an_event_commits_with_its_change_or_not_at_all(open_store: StoreOpener) -> None:
    store = await open_store(InventoryStore)
    appended = await store.db.write(change_and_event("SKU-A"))
    with pytest.raises(Failed):
        await store.db.write(change_and_event("SKU-B", fail=True))
    assert await products(store) == ["SKU-A"]
    assert await events(store) == [(appended.event_id, "SKU-A", 1, False)]
    # The rolled-back write took no sequence number either: the next one is 2, no gap.
    again = await append(store, "SKU-A", "SKU-B")
    assert [(e.aggregate_id, e.sequence) for e in again] == [("SKU-A", 2), ("SKU-B", 1)]


async def test_a_failed_write_among_concurrent_ones_leaves_only_its_event_out(
    open_store: StoreOpener,
) -> None:
    """On SQLite the three writes share a group commit (each its own savepoint): the
    failed one's change and event go, the others' stay."""
    store = await open_store(InventoryStore)
    outcomes = await asyncio.gather(
        store.db.write(change_and_event("SKU-A")),
        store.db.write(change_and_event("SKU-B", fail=True)),
        store.db.write(change_and_event("SKU-C")),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], Failed)
    assert await products(store) == ["SKU-A", "SKU-C"]
    assert sorted((a, s) for _, a, s, _ in await events(store)) == [("SKU-A", 1), ("SKU-C", 1)]


async def test_the_envelope_carries_the_event_id_sequence_and_time(
    open_store: StoreOpener,
) -> None:
    store = await open_store(InventoryStore)
    given: list[tuple[str, int, float]] = []

    def build(event_id: str, sequence: int, occurred_at: float) -> bytes:
        given.append((event_id, sequence, occurred_at))
        return b"\x00\xffbytes"

    async def write(tx: Tx) -> list[outbox.Appended]:
        return [
            await outbox.append(
                tx,
                aggregate_id="o1",
                subject=SUBJECT,
                envelope_for=build,
                event_id="e-1",
                now=1000.0,
            ),
            await outbox.append(tx, aggregate_id="o1", subject=SUBJECT, envelope_for=build),
        ]

    before = time.time()
    first, second = await store.db.write(write)
    assert given[0] == ("e-1", 1, 1000.0) and first == outbox.Appended("e-1", "o1", 1, 1000.0)
    assert given[1] == (second.event_id, 2, second.occurred_at)
    assert before - 5 <= second.occurred_at <= time.time() + 5  # the database's clock
    pending = await outbox.Outbox(store.db).pending(10)
    assert [(p.event_id, p.subject, p.envelope) for p in pending] == [
        ("e-1", SUBJECT, b"\x00\xffbytes"),
        (second.event_id, SUBJECT, b"\x00\xffbytes"),
    ]


async def test_each_aggregate_counts_its_own_sequence(open_store: StoreOpener) -> None:
    store = await open_store(InventoryStore)
    await append(store, "A", "A", "B")
    await append(store, "A")
    await append(store, "B", "C")
    assert [(a, s) for _, a, s, _ in await events(store)] == [
        ("A", 1),
        ("A", 2),
        ("B", 1),
        ("A", 3),
        ("B", 2),
        ("C", 1),
    ]


async def test_a_relay_publishes_each_aggregates_events_in_order_the_firsts_together(
    open_store: StoreOpener,
) -> None:
    store = await open_store(InventoryStore)
    a1, b1, a2 = await append(store, "A", "B", "A")
    (c1,) = await append(store, "C")
    publisher = FakePublisher()
    assert await relay(store, publisher, "one").step() == (SETTINGS.poll_interval_seconds, True)
    # A's, B's and C's first events in one wave, A's second once A's first was acked.
    assert publisher.ids == [a1.event_id, b1.event_id, c1.event_id, a2.event_id]
    assert publisher.most_in_flight == 3
    assert {subject for subject, _, _ in publisher.sent} == {SUBJECT}
    first = publisher.sent[0][2].decode().split("|")
    assert first[:2] == [a1.event_id, "1"]
    assert [sent for *_, sent in await events(store)] == [True] * 4
    assert await outbox.Outbox(store.db).backlog() == outbox.Backlog(0, 0.0)


def test_waves_hold_the_nth_event_of_each_aggregate_in_the_batchs_order() -> None:
    batch = [
        outbox.Pending(f"{aggregate}{n}", aggregate, n, SUBJECT, b"")
        for aggregate, n in [("A", 1), ("B", 1), ("A", 2), ("A", 3), ("C", 1), ("B", 2)]
    ]
    assert [[e.event_id for e in wave] for wave in waves(batch)] == [
        ["A1", "B1", "C1"],
        ["A2", "B2"],
        ["A3"],
    ]
    assert waves([]) == []


async def test_batches_follow_each_other_until_the_outbox_is_empty(
    open_store: StoreOpener,
) -> None:
    store = await open_store(InventoryStore)
    appended = await append(store, *"ABCDE")
    publisher = FakePublisher()
    one = relay(store, publisher, "one", batch_size=2)
    assert [await one.step() for _ in range(3)] == [(0.0, False), (0.0, False), (0.05, True)]
    assert publisher.ids == [e.event_id for e in appended]


async def test_only_the_lease_holder_of_two_relays_publishes_and_a_stop_hands_over(
    open_store: StoreOpener,
) -> None:
    a_store, b_store = await open_store(InventoryStore), await open_store(InventoryStore)
    a_sent, b_sent = FakePublisher(), FakePublisher()
    a, b = relay(a_store, a_sent, "a"), relay(b_store, b_sent, "b")
    first = await append(a_store, "A", "B")
    await a.step()
    assert await b.step() == (SETTINGS.poll_interval_seconds, False)  # standing by
    second = await append(b_store, "A")
    await b.step()
    await a.step()
    assert a_sent.ids == [e.event_id for e in first + second] and b_sent.ids == []
    assert a.lease is not None and b.lease is None

    await a.stop()  # gives the lease up: b takes over at once, at the next epoch
    third = await append(a_store, "B")
    await b.step()
    assert b_sent.ids == [third[0].event_id]
    held = await outbox.Outbox(b_store.db).lease()
    assert held is not None and held[0] == outbox.RelayLease("b", 2)


async def test_a_relay_that_lost_its_lease_mid_batch_marks_nothing(
    open_store: StoreOpener,
) -> None:
    """Its lease ran out and another relay took it while it published (it was paused):
    its mark is fenced off, and the new holder publishes the same events again."""
    a_store, b_store = await open_store(InventoryStore), await open_store(InventoryStore)
    appended = await append(a_store, "A", "A", "B")
    a_sent, b_sent = FakePublisher(), FakePublisher()
    a, b = relay(a_store, a_sent, "a"), relay(b_store, b_sent, "b")
    b_sent.down = True  # b publishes nothing in its first step

    async def taken_over(msg_id: str) -> None:
        if msg_id == appended[1].event_id:
            await expire_lease(a_store)
            await b.step()  # b takes the lease; its publish fails, it marks nothing

    a_sent.before = taken_over
    await a.step()
    published = [appended[0].event_id, appended[2].event_id, appended[1].event_id]  # A1 B A2
    assert a_sent.ids == published  # trusted its lease throughout
    assert a.lease is None  # the mark found another epoch
    assert [sent for *_, sent in await events(a_store)] == [False] * 3

    b_sent.down = False
    await b.step()
    assert b_sent.ids == published
    assert [sent for *_, sent in await events(b_store)] == [True] * 3


async def test_a_relay_killed_between_the_ack_and_the_mark_republishes_the_same_event_ids(
    open_store: StoreOpener,
) -> None:
    store = await open_store(InventoryStore)
    appended = await append(store, "A", "B")
    dead = relay(store, FakePublisher(), "dead")

    async def killed(*args: object, **kwargs: object) -> int:
        raise Killed

    dead.outbox.mark_sent = killed  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await dead.step()
    assert dead.publisher.ids == [e.event_id for e in appended]  # type: ignore[attr-defined]
    await expire_lease(store)  # nobody renews a dead relay's lease

    successor = FakePublisher()
    await relay(store, successor, "successor").step()
    # The same ids: JetStream's Nats-Msg-Id dedup (inside its window), or a consumer's
    # by event id, drops the second copy.
    assert successor.sent == dead.publisher.sent  # type: ignore[attr-defined]
    assert [sent for *_, sent in await events(store)] == [True, True]


async def test_a_failing_publish_holds_back_its_aggregates_later_events_only(
    open_store: StoreOpener,
) -> None:
    store = await open_store(InventoryStore)
    a1, b1, a2, c1, a3 = await append(store, "A", "B", "A", "C", "A")
    publisher = FakePublisher()
    publisher.fail_on = {a2.event_id}
    one = relay(store, publisher, "one")
    pause, wake = await one.step()
    assert 0 < pause <= SETTINGS.max_backoff_seconds and not wake  # backing off
    assert publisher.ids == [a1.event_id, b1.event_id, c1.event_id]
    assert publisher.tried[-1] == a2.event_id  # and not A #3 after it
    assert [sent for *_, sent in await events(store)] == [True, True, False, True, False]

    publisher.fail_on = set()
    await one.step()
    assert publisher.ids[3:] == [a2.event_id, a3.event_id]  # A #2 before A #3


async def test_a_publish_that_never_answers_is_abandoned_at_the_timeout(
    open_store: StoreOpener,
) -> None:
    store = await open_store(InventoryStore)
    a1, b1, a2 = await append(store, "A", "B", "A")
    publisher = FakePublisher()
    publisher.hang_on = {a1.event_id}
    one = relay(store, publisher, "one", publish_timeout_seconds=0.2)
    started = time.monotonic()
    pause, _ = await one.step()
    assert time.monotonic() - started < 5.0 and pause > 0  # backing off, not waiting
    assert publisher.ids == [b1.event_id] and a2.event_id not in publisher.tried
    assert publisher.in_flight == 0  # the abandoned publish was cancelled
    assert [sent for *_, sent in await events(store)] == [False, True, False]


async def test_prune_removes_only_sent_events_older_than_the_retention(
    open_store: StoreOpener,
) -> None:
    store = await open_store(InventoryStore)
    box = outbox.Outbox(store.db)
    old_sent, old_pending, new_sent = await append(store, "A", "A", "B")
    lease = await box.acquire("one", 10.0)
    assert lease is not None
    await box.mark_sent(lease, [old_sent.event_id], now=1000.0)
    await box.mark_sent(lease, [new_sent.event_id], now=2000.0)
    assert await box.prune(lease, retention_seconds=500.0, limit=10, now=2001.0) == 1
    assert [(e, sent) for e, _, _, sent in await events(store)] == [
        (old_pending.event_id, False),
        (new_sent.event_id, True),
    ]
    # The counters stay: A's next event is #3, not a second #1.
    assert [(e.aggregate_id, e.sequence) for e in await append(store, "A")] == [("A", 3)]
    # Only under the lease.
    await expire_lease(store)
    assert await box.acquire("two", 10.0) is not None
    with pytest.raises(outbox.LeaseLost):
        await box.prune(lease, retention_seconds=0.0, limit=10, now=9999.0)


async def test_the_backlog_grows_while_nats_is_down_and_drains_once_it_is_back(
    open_store: StoreOpener,
) -> None:
    store = await open_store(InventoryStore)
    publisher = FakePublisher()
    publisher.down = True
    running = relay(store, publisher, "one")
    box = running.outbox
    running.start()
    try:
        appended = []
        for _ in range(5):
            appended += await append(store, "A", "B")
            box.notify()
        await until(lambda: len(publisher.tried) >= 3, "the relay to keep trying")
        backlog = await box.backlog()
        assert backlog.pending == 10 and backlog.oldest_age_seconds >= 0
        publisher.down = False
        await until(lambda: len(publisher.sent) == 10, "the backlog to drain")
        assert publisher.ids == [e.event_id for e in appended]
        deadline = time.monotonic() + 10.0
        while (await box.backlog()).pending:  # marked once the batch's last ack is in
            assert time.monotonic() < deadline, "the acked events were never marked sent"
            await asyncio.sleep(0.01)
    finally:
        await running.stop()
    held = await box.lease()
    assert held is not None and held[1] == 0  # given up on stop


async def test_a_commit_wakes_the_relay_without_waiting_for_its_poll(
    open_store: StoreOpener,
) -> None:
    store = await open_store(InventoryStore)
    publisher = FakePublisher()
    async with leased(
        store,
        publisher,
        poll_interval_seconds=60.0,
        lease_seconds=600.0,
        publish_timeout_seconds=2.0,
    ) as running:
        (event,) = await append(store, "A")
        running.outbox.notify()
        # Well inside the poll interval, and inside an eighth of the lease (its longest
        # sleep): the notify woke it.
        await until(lambda: publisher.ids == [event.event_id], "the relay to publish", 5.0)


async def test_a_woken_relay_lingers_so_the_next_moments_commits_share_its_batch(
    open_store: StoreOpener,
) -> None:
    """Two commits in quick succession share one batch: one wave of both, one mark.
    (With `linger_seconds=0` the relay, woken by the first, reads it before the second
    commits: two batches, as this test then finds.)"""
    store = await open_store(InventoryStore)
    publisher = FakePublisher()
    async with leased(
        store, publisher, poll_interval_seconds=60.0, lease_seconds=600.0, linger_seconds=0.5
    ) as running:
        appended = []
        for aggregate in "AB":
            appended += await append(store, aggregate)
            running.outbox.notify()
        await until(lambda: len(publisher.sent) == 2, "the relay to publish both", 5.0)
    assert publisher.ids == [e.event_id for e in appended]
    marks = await rows(store, "SELECT DISTINCT sent_at FROM outbox")
    assert (publisher.most_in_flight, len(marks)) == (2, 1)


async def test_a_relay_publishes_only_while_its_lease_is_trusted_for_the_publish_timeout(
    open_store: StoreOpener,
) -> None:
    """With less than the publish timeout of trust left it renews first; if it cannot
    (another relay holds the lease) it publishes nothing more."""
    a_store, b_store = await open_store(InventoryStore), await open_store(InventoryStore)
    appended = await append(a_store, "A", "A")  # two waves
    publisher = FakePublisher()
    a = relay(a_store, publisher, "a")
    b_box = outbox.Outbox(b_store.db)

    async def lease_runs_out(msg_id: str) -> None:
        if msg_id == appended[0].event_id:
            a._trusted_until = time.monotonic()  # a pause as long as its trust
            await expire_lease(a_store)
            assert await b_box.acquire("b", 60.0) is not None

    publisher.before = lease_runs_out
    await a.step()
    assert publisher.tried == [appended[0].event_id]  # the second wave was not tried
    assert a.lease is None
    assert [sent for *_, sent in await events(a_store)] == [False, False]


async def test_a_relay_whose_trust_ran_low_renews_its_lease_before_it_publishes(
    open_store: StoreOpener,
) -> None:
    store = await open_store(InventoryStore)
    publisher = FakePublisher()
    one = relay(store, publisher, "one")
    await one.step()  # takes the lease
    before = await one.outbox.lease()
    (event,) = await append(store, "A")
    one._trusted_until = time.monotonic()  # as after a pause
    await one.step()
    after = await one.outbox.lease()
    assert before is not None and after is not None
    assert after[0] == before[0] == outbox.RelayLease("one", 1)  # renewed, not retaken
    assert after[1] > before[1]
    assert publisher.ids == [event.event_id]


def test_the_relays_settings_come_from_the_service_config_and_are_checked() -> None:
    config = load(StoreConfig, ["--outbox-batch-size", "7", "--nats-url", "nats://127.0.0.1:4222"])
    assert RelaySettings.of(config).batch_size == 7
    assert config.nats_url == "nats://127.0.0.1:4222"
    assert StoreConfig().nats_url == ""  # no relay unless a NATS server is named
    with pytest.raises(ConfigError) as error:
        load(StoreConfig, ["--outbox-lease-seconds", "8", "--outbox-publish-timeout-seconds", "2"])
    assert error.value.problems == (
        "outbox_lease_seconds must be more than 4x outbox_publish_timeout_seconds, got 8 and 2",
    )
    with pytest.raises(ConfigError, match="outbox_batch_size must be > 0"):
        load(StoreConfig, ["--outbox-batch-size", "0"])
    assert RelaySettings.of(load(StoreConfig, ["--outbox-linger-seconds", "0"])).linger_seconds == 0
    with pytest.raises(ConfigError, match="outbox_linger_seconds must be >= 0 and below"):
        load(StoreConfig, ["--outbox-linger-seconds", "1", "--outbox-poll-interval-seconds", "1"])


async def test_a_service_runs_a_relay_only_with_a_nats_url_and_a_publisher(
    tmp_path: pathlib.Path,
) -> None:
    publisher = FakePublisher()
    urls: list[str] = []

    async def publishers(url: str) -> FakePublisher:
        urls.append(url)
        return publisher

    config = InventoryConfig(db_path=tmp_path / "inventory.db", nats_url="nats://127.0.0.1:1")
    service = await create_inventory(config, publishers)
    await service.start()
    try:
        assert service.relay is not None and urls == ["nats://127.0.0.1:1"]
        (event,) = await append(service.store, "SKU-A")
        service.store.outbox.notify()  # as a store method does after its commit
        await until(lambda: publisher.ids == [event.event_id], "the service's relay to publish")
    finally:
        await service.stop()

    for unset in (dataclasses.replace(config, nats_url=""), config):
        service = await create_inventory(unset, None if unset is config else publishers)
        await service.start()
        assert service.relay is None  # no NATS named, or nothing to reach it with
        await service.stop()
