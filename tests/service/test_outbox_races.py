"""The outbox's races on a real PostgreSQL 15 (services/common/outbox.py, relay.py): two
instances of a service (two `Store.open`s, two pools) on one database, appending to one
aggregate and running relays on one outbox at the same instant.

As in test_store_races.py, the calls are made to meet: a third connection (the holder)
takes a lock both must pass, both calls start, the test waits until pg_stat_activity
shows both waiting on a lock (polled within a bound), then the holder lets go."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import pytest

from services.common import outbox
from services.common.postgresql import PoolSettings
from services.common.relay import Relay
from services.inventory.store import InventoryStore
from shopmesh.postgres import Cluster
from tests.outbox_helpers import SETTINGS, FakePublisher, append, events, expire_lease

LOCK_WAIT_TIMEOUT_SECONDS = 4.0
"""How long each step of a schedule may take to form (a call seen waiting)."""
POOL = PoolSettings(lock_timeout_ms=20_000)
"""A lock_timeout well above the schedules' bounds (see test_store_races.py)."""
T = TypeVar("T")


@dataclass
class Two:
    """Two instances of the inventory store on one database, a holder and an observer."""

    one: InventoryStore
    two: InventoryStore
    holder: asyncpg.Connection
    observer: asyncpg.Connection

    async def waiting(self, count: int, calls: Sequence[asyncio.Future[Any]]) -> None:
        """Returns once `count` backends of this database wait on a lock; fails if a call
        finishes first (it passed where it should have waited)."""
        deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            for call in calls:
                if call.done():
                    raise AssertionError(f"a call finished before it waited: {call.result()!r}")
            waiting = await self.observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{count} calls never waited on a lock at once")

    async def in_turn(self, lock: str, *calls: Awaitable[T], how: str = "COMMIT") -> list[T]:
        """Starts `calls` one after the other, each once the ones before it wait on `lock`
        (or on what they hold), then lets them all go (`how`: COMMIT or ROLLBACK)."""
        await self.holder.execute("BEGIN")
        await self.holder.execute(lock)
        started: list[asyncio.Future[T]] = []
        try:
            for call in calls:
                started.append(asyncio.ensure_future(call))
                await self.waiting(len(started), started)
        finally:
            await self.holder.execute(how)
        return list(await asyncio.gather(*started))


@pytest.fixture(scope="module")
def dsn(postgres_cluster: Cluster) -> str:
    return postgres_cluster.ensure_database("inventory")


@pytest.fixture
async def two(dsn: str) -> AsyncIterator[Two]:
    async with contextlib.AsyncExitStack() as stack:
        one = await InventoryStore.open(dsn, pool=POOL)  # applies the migrations
        stack.push_async_callback(one.aclose)
        other = await InventoryStore.open(dsn, pool=POOL)
        stack.push_async_callback(other.aclose)
        holder, observer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        stack.push_async_callback(holder.close)
        stack.push_async_callback(observer.close)
        await observer.execute(
            "TRUNCATE outbox, outbox_sequences, outbox_relay_lease RESTART IDENTITY"
        )
        yield Two(one, other, holder, observer)


async def sequences(k: Two, aggregate: str) -> list[int]:
    """The aggregate's sequence numbers in the relay's order (rowid)."""
    return [
        int(row[0])
        for row in await k.observer.fetch(
            "SELECT sequence FROM outbox WHERE aggregate_id = $1 ORDER BY rowid", aggregate
        )
    ]


async def test_first_appends_of_a_new_aggregate_at_once_take_1_and_2(two: Two) -> None:
    """Both find no counter row and insert one: the second waits on the first's key
    (the holder's uncommitted row, then the first's), and its upsert then takes 2."""
    k = two
    first, second = await k.in_turn(
        "INSERT INTO outbox_sequences (aggregate_id, last_sequence) VALUES ('order-1', 0)",
        append(k.one, "order-1"),
        append(k.two, "order-1"),
        how="ROLLBACK",
    )
    assert sorted([first[0].sequence, second[0].sequence]) == [1, 2]
    assert await sequences(k, "order-1") == [1, 2]


async def test_appends_to_one_aggregate_from_two_instances_leave_no_gap_and_no_duplicate(
    two: Two,
) -> None:
    """Two appends wait on the aggregate's counter row at once; then 2 x 20 appends
    from both instances race freely. Every number is taken once, and the relay's order
    (rowid, taken at INSERT) is the numbers' order, whatever the commit order."""
    k = two
    await append(k.one, "order-1")
    await k.in_turn(
        "SELECT 1 FROM outbox_sequences WHERE aggregate_id = 'order-1' FOR UPDATE",
        append(k.one, "order-1"),
        append(k.two, "order-1", "order-2"),
    )
    await asyncio.gather(*(append(s, "order-1") for s in [k.one, k.two] * 20))
    assert await sequences(k, "order-1") == list(range(1, 44))
    assert await sequences(k, "order-2") == [1]


async def test_a_straight_port_counting_max_plus_one_collides(two: Two, dsn: str) -> None:
    """Why a counter row, not `max(sequence) + 1`: under READ COMMITTED the second append
    reads the same maximum (the first's row is not committed), its INSERT waits on the
    unique key, and once the first commits it fails with unique_violation, aborting the
    write it was part of."""
    k = two
    other = await asyncpg.connect(dsn)
    try:
        statements = (
            "SELECT coalesce(max(sequence), 0) + 1 FROM outbox WHERE aggregate_id = 'order-1'",
            "INSERT INTO outbox (event_id, aggregate_id, sequence, subject, envelope, created_at)"
            " VALUES ($1, 'order-1', $2, 's', '', 0)",
        )
        await k.holder.execute("BEGIN")
        first = await k.holder.fetchval(statements[0])
        await k.holder.execute(statements[1], "e-1", first)
        await other.execute("BEGIN")
        second = await other.fetchval(statements[0])
        assert first == second == 1
        inserting = asyncio.ensure_future(other.execute(statements[1], "e-2", second))
        await k.waiting(1, [inserting])
        await k.holder.execute("COMMIT")
        with pytest.raises(asyncpg.UniqueViolationError):
            await inserting
        await other.execute("ROLLBACK")
    finally:
        await other.close()


async def test_two_relays_taking_a_free_lease_at_once_only_one_publishes(two: Two) -> None:
    k = two
    appended = await append(k.one, "A", "B", "A")
    one, other = FakePublisher(), FakePublisher()
    relays = [
        Relay(outbox.Outbox(k.one.db), one, SETTINGS, owner="one"),
        Relay(outbox.Outbox(k.two.db), other, SETTINGS, owner="two"),
    ]
    await k.in_turn(
        "INSERT INTO outbox_relay_lease (id, owner, epoch, expires_at) VALUES (1, 'gone', 1, 0)",
        relays[0].step(),
        relays[1].step(),
    )
    published = [p.ids for p in (one, other)]
    assert sorted(published, key=len) == [[], [e.event_id for e in appended]]
    held = await outbox.Outbox(k.one.db).lease()
    assert held is not None and held[0].epoch == 2  # the free lease taken once
    assert [r.lease is not None for r in relays].count(True) == 1


@pytest.mark.parametrize("first", ["mark", "takeover"])
async def test_a_mark_and_a_takeover_at_once(two: Two, first: str) -> None:
    """A relay whose lease ran out marks what it published while another takes the lease:
    the mark first, the takeover waits for it (FOR SHARE) and the events stay marked;
    the takeover first, the mark finds another epoch, marks nothing (LeaseLost), and the
    new holder publishes the events again."""
    k = two
    appended = await append(k.one, "A", "B")
    old_box, new_box = outbox.Outbox(k.one.db), outbox.Outbox(k.two.db)
    taken = await old_box.acquire("old", 60.0)
    assert taken is not None
    old: outbox.RelayLease = taken
    await expire_lease(k.one)

    async def mark() -> int | outbox.LeaseLost:
        try:
            return await old_box.mark_sent(old, [e.event_id for e in appended])
        except outbox.LeaseLost as lost:
            return lost

    calls = [mark(), new_box.acquire("new", 60.0)]
    if first == "takeover":
        calls.reverse()
    outcomes = await k.in_turn("SELECT 1 FROM outbox_relay_lease WHERE id = 1 FOR UPDATE", *calls)
    marked, took = outcomes if first == "mark" else outcomes[::-1]
    assert took == outbox.RelayLease("new", 2)
    if first == "mark":
        assert marked == 2
        assert [sent for *_, sent in await events(k.one)] == [True, True]
    else:
        assert isinstance(marked, outbox.LeaseLost)
        assert [sent for *_, sent in await events(k.one)] == [False, False]


class TimedPublisher(FakePublisher):
    """Records when each publish began and ended, and by which relay."""

    def __init__(self, name: str, spans: list[tuple[str, str, float, float]]) -> None:
        super().__init__()
        self.name = name
        self.spans = spans

    async def publish(self, subject: str, msg_id: str, data: bytes) -> None:
        began = time.monotonic()
        await asyncio.sleep(0.001)  # a round trip to the server
        await super().publish(subject, msg_id, data)
        self.spans.append((self.name, msg_id, began, time.monotonic()))


async def test_two_running_relays_never_publish_at_once_and_hand_over_on_stop(
    two: Two,
) -> None:
    """Both instances append and run a relay; the holder is stopped halfway. Every event
    is published, each aggregate's in sequence order, and the two relays' publishes never
    overlap in time (a relay's own do: it publishes a wave at once)."""
    k = two
    spans: list[tuple[str, str, float, float]] = []
    publishers = [TimedPublisher("one", spans), TimedPublisher("two", spans)]
    settings = dataclasses.replace(SETTINGS, batch_size=5)
    relays = [
        Relay(outbox.Outbox(store.db), publisher, settings, owner=publisher.name)
        for store, publisher in zip([k.one, k.two], publishers, strict=True)
    ]
    for running in relays:
        running.start()
    stopped: list[Relay] = []
    try:
        appended: list[outbox.Appended] = []
        for round_ in range(10):
            for store, running in zip([k.one, k.two], relays, strict=True):
                appended += await append(store, f"order-{round_ % 3}", f"order-{round_ % 4}")
                running.outbox.notify()
            if round_ == 5:
                # The holder has published (it lingers after a wake), then it stops.
                deadline = time.monotonic() + 10.0
                while not spans:
                    assert time.monotonic() < deadline, "no relay published"
                    await asyncio.sleep(0.01)
                holder = next(r for r in relays if r.lease is not None)
                await holder.stop()
                stopped.append(holder)
        deadline = time.monotonic() + 10.0
        while (await relays[0].outbox.backlog()).pending:
            assert time.monotonic() < deadline, "the outbox never drained"
            await asyncio.sleep(0.01)
    finally:
        for running in relays:
            if running not in stopped:
                await running.stop()
    spans.sort(key=lambda span: span[2])
    assert {msg_id for _, msg_id, _, _ in spans} == {e.event_id for e in appended}
    # Each aggregate's events were first published in sequence order.
    by_id = {e.event_id: e for e in appended}
    firsts: dict[str, list[int]] = {}
    seen: set[str] = set()
    for _, msg_id, _, _ in spans:
        if msg_id not in seen:
            seen.add(msg_id)
            firsts.setdefault(by_id[msg_id].aggregate_id, []).append(by_id[msg_id].sequence)
    assert all(numbers == sorted(numbers) for numbers in firsts.values()), firsts
    # A relay's own publishes overlap (a wave is published at once); the other relay's
    # never: each publish began after every earlier-begun one of the other had ended.
    ended: dict[str, float] = {}
    for name, msg_id, began, finished in spans:
        others = [at for other, at in ended.items() if other != name]
        assert all(at <= began for at in others), f"{msg_id} of {name} published at once"
        ended[name] = max(ended.get(name, 0.0), finished)
    assert any(
        a == b and b_began < a_ended
        for (a, _, _, a_ended), (b, _, b_began, _) in itertools.pairwise(spans)
    ), "no relay ever had two publishes in flight (a wave at once)"
    assert {name for name, _, _, _ in spans} == {"one", "two"}  # the stop handed over
