"""The read model's projection on the session's backend: what each event does to the
tables, redelivery changing nothing, events in any order making the same tables, unknown
types skipped and undecodable messages parked, and the lag."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence

from services.common.events import spec
from services.reporting.consumer import Projector, lag, run
from services.reporting.domain import KNOWN_TYPES, OrderState, utc_day
from services.reporting.store import ReportingStore
from shop.events.v1 import envelope_pb2
from shop.inventory.v1 import inventory_events_pb2
from shop.order.v1 import order_events_pb2 as ordev
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_events_pb2
from tests.reporting_helpers import (
    DAY1,
    FakeMessage,
    FakeNames,
    FakeSource,
    messages,
    order_events,
    read_model_query,
    wire,
)
from tests.stores import StoreOpener, rows

NAMES = {"SKU-TEA": "Green tea", "SKU-MUG": "Mug"}


TABLES = (
    "applied_events",
    "product_names",
    "sku_day_sales",
    "product_sales",
    "day_revenue",
    "user_orders",
    "user_order_lines",
)


async def tables(store: ReportingStore) -> dict[str, list[tuple[object, ...]]]:
    return {t: sorted(await rows(store, read_model_query(t)), key=repr) for t in TABLES}


async def test_a_confirmed_and_a_cancelled_order_fill_every_report(
    open_store: StoreOpener,
) -> None:
    store = await open_store(ReportingStore)
    names = FakeNames(NAMES)
    projector = Projector(store, names)
    batch = messages(
        order_events("o1", "alice", DAY1 + 10, confirm=True)
        + order_events("o2", "alice", DAY1 + 20, confirm=False)
    )
    before = time.time()
    applied = await projector.handle(batch)
    assert applied is not None and applied.applied == 5
    assert all(m.settled == ["ack"] for m in batch)
    # When each was applied (the bench's lag from commit to the read model).
    stamped = await rows(store, "SELECT applied_at FROM applied_events")
    now = time.time()
    assert len(stamped) == 5
    times = [at for (at,) in stamped if isinstance(at, float)]
    assert len(times) == 5 and all(before - 1 <= at <= now + 1 for at in times)

    day = utc_day(DAY1)
    assert day == "2026-01-01"
    sales = await store.sku_sales(day, day, "", None, 10)
    assert [(s.sku, s.product_name, s.units, s.revenue_minor) for s in sales] == [
        ("SKU-MUG", "Mug", 1, 1200),
        ("SKU-TEA", "Green tea", 2, 900),
    ]
    revenue = await store.daily_revenue(day, day)
    assert [(r.orders, r.revenue_minor) for r in revenue] == [(1, 2100)]  # not the cancelled
    top = await store.top_products(10)
    assert [t.sku for t in top] == ["SKU-TEA", "SKU-MUG"]
    summary = await store.user_summary("alice", None, 10)
    assert summary.counts[OrderState.CONFIRMED] == 1
    assert summary.counts[OrderState.CANCELLED] == 1
    assert summary.spent == {"USD": 2100}
    assert [o.order_id for o in summary.orders] == ["o2", "o1"]  # newest first
    assert summary.orders[1].lines[0].product_name == "Mug"
    assert summary.orders[0].cancel_reason == "INSUFFICIENT_FUNDS"
    assert sorted(names.asked) == ["SKU-MUG", "SKU-TEA"]  # once each, not per event


async def test_redelivery_changes_nothing(open_store: StoreOpener) -> None:
    store = await open_store(ReportingStore)
    projector = Projector(store, FakeNames(NAMES))
    datas = order_events("o1", "bob", DAY1, confirm=True)
    await projector.handle(messages(datas))
    before = await tables(store)
    again = await projector.handle(messages(datas))  # the same events, redelivered
    assert again is not None and (again.applied, again.duplicates) == (0, 3)
    assert await tables(store) == before


async def test_any_arrival_order_makes_the_same_tables(open_store: StoreOpener) -> None:
    """What a rebuild relies on: sums and the latest event by sequence do not depend on
    the order of arrival (a nak'ed batch comes back after later ones)."""
    datas: list[bytes] = []
    for n in range(30):
        datas += order_events(f"o{n}", f"user{n % 4}", DAY1 + n * 7_000, confirm=n % 3 != 0)
    first = await open_store(ReportingStore)
    await Projector(first, FakeNames(NAMES)).handle(messages(datas))
    shuffled = list(enumerate(datas, start=1))
    random.Random(7).shuffle(shuffled)
    # A second database of the same service: on PostgreSQL the same one, so compare
    # against a snapshot taken first.
    expected = await tables(first)
    second = await open_store(ReportingStore)
    await second.db.write(_empty)
    projector = Projector(second, FakeNames(NAMES))
    for start in range(0, len(shuffled), 8):
        chunk = shuffled[start : start + 8]
        await projector.handle([FakeMessage(d, seq) for seq, d in chunk])
    assert await tables(second) == expected
    assert len(expected["day_revenue"]) > 1  # the orders span several UTC days


async def _empty(tx: object) -> None:
    for table in (
        "user_order_lines",
        *[t for t in TABLES if t != "user_order_lines"],
        "projection_state",
    ):
        await tx.execute(f"DELETE FROM {table}")  # type: ignore[attr-defined]


async def test_unknown_types_are_skipped_and_garbage_is_parked(open_store: StoreOpener) -> None:
    store = await open_store(ReportingStore)
    projector = Projector(store, FakeNames(NAMES))
    newer = envelope_pb2.EventEnvelope(
        event_id=str(uuid.uuid4()),
        type="shop.order.v2.OrderShipped",
        aggregate_id="o9",
        sequence=3,
        payload=b"\x0a\x02o9",
    )
    # A known type from a newer contract: an extra field (number 99) is ignored.
    confirmed = order_events("o1", "carol", DAY1, confirm=True)
    with_extra = envelope_pb2.EventEnvelope.FromString(confirmed[2])
    with_extra.payload += b"\xfa\x06\x03new"  # field 111, bytes "new"
    batch = messages(
        [
            confirmed[0],
            confirmed[1],
            with_extra.SerializeToString(),
            newer.SerializeToString(),
            b"\xff\xff not protobuf",
        ]
    )
    applied = await projector.handle(batch)
    assert applied is not None and (applied.applied, applied.skipped, applied.parked) == (3, 1, 1)
    assert [m.settled for m in batch] == [["ack"], ["ack"], ["ack"], ["ack"], ["term"]]
    assert [
        (r.orders, r.revenue_minor) for r in await store.daily_revenue("2026-01-01", "2026-01-01")
    ] == [(1, 2100)]
    state = await store.state()
    assert (state.applied, state.skipped, state.parked, state.applied_sequence) == (3, 1, 1, 5)


async def test_a_batch_that_cannot_get_its_names_is_retried(open_store: StoreOpener) -> None:
    store = await open_store(ReportingStore)
    names = FakeNames(NAMES)
    names.down = True
    projector = Projector(store, names, retry_delay_seconds=0.0)
    batch = messages(order_events("o1", "dan", DAY1, confirm=True))
    assert await projector.handle(batch) is None
    assert all(m.settled == ["nak"] for m in batch)
    assert await rows(store, "SELECT COUNT(*) FROM applied_events") == [(0,)]
    names.down = False
    assert (
        await projector.handle(messages(order_events("o1", "dan", DAY1, confirm=True)))
    ) is not None


async def test_lag_counts_events_and_seconds_behind(open_store: StoreOpener) -> None:
    store = await open_store(ReportingStore)
    empty = await lag(store, FakeSource(5), now=DAY1)
    assert (empty.events_behind, empty.seconds_behind) == (5, None)
    await Projector(store, FakeNames(NAMES)).handle(
        messages(order_events("o1", "erin", DAY1, confirm=True))
    )
    found = await lag(store, FakeSource(10), now=DAY1 + 60)
    assert found.events_behind == 7  # 10 in the stream, 3 applied
    assert found.seconds_behind == 58.0  # the last applied event is at DAY1 + 2
    assert (await lag(store, FakeSource(None))).events_behind is None


async def test_an_event_that_cannot_be_applied_is_parked_alone(open_store: StoreOpener) -> None:
    """A producer's bug (one SKU twice in an order: two rows of one key) must not hold the
    batch's other events back for ever: the batch is applied one event at a time, and only
    that event is parked."""
    store = await open_store(ReportingStore)
    bad = ordev.OrderPlaced(
        order_id="o-bad",
        user_id="eve",
        line_items=[order_pb2.LineItem(sku="SKU-TEA", quantity=1)] * 2,
        state=order_pb2.ORDER_STATE_PENDING,
    )
    good = order_events("o1", "eve", DAY1, confirm=True)
    batch = messages([good[0], wire(bad, 1, DAY1), good[1], good[2]])
    applied = await Projector(store, FakeNames(NAMES)).handle(batch)
    assert applied is not None and (applied.applied, applied.parked) == (3, 1)
    assert [m.settled for m in batch] == [["ack"], ["term"], ["ack"], ["ack"]]
    assert await rows(store, "SELECT order_id, state FROM user_orders") == [("o1", "CONFIRMED")]
    assert (await store.state()).applied_sequence == 4


def test_every_contract_event_is_known() -> None:
    """A contract event the read model does not list would be counted as a newer
    producer's (skipped): every event message of the contracts is known."""
    for module in (ordev, inventory_events_pb2, payment_events_pb2):
        for name in module.DESCRIPTOR.message_types_by_name:
            fact = getattr(module, name)()
            spec(fact)  # an event of the contracts
            assert fact.DESCRIPTOR.full_name in KNOWN_TYPES, name


class LosingAcks(FakeMessage):
    """A message whose ack fails, as one does when the connection goes with it."""

    async def ack(self) -> None:
        raise ConnectionError("connection closed")


async def test_the_consumer_goes_on_after_a_failure(open_store: StoreOpener) -> None:
    """An ack lost with the connection must not end the consumer: the message comes again
    (deduplicated) and the next batches are applied."""
    store = await open_store(ReportingStore)
    first = order_events("o1", "fay", DAY1, confirm=True)
    second = order_events("o2", "fay", DAY1 + 5, confirm=True)
    batches = [
        [LosingAcks(first[0], 1), FakeMessage(first[1], 2), FakeMessage(first[2], 3)],
        messages(first),  # redelivered
        messages(second, first=4),
    ]
    stop = asyncio.Event()

    class Batches(FakeSource):
        async def fetch(self, batch: int, wait_seconds: float) -> Sequence[FakeMessage]:
            if not batches:
                stop.set()
                return []
            return batches.pop(0)

    await asyncio.wait_for(
        run(
            Projector(store, FakeNames(NAMES), retry_delay_seconds=0.0),
            Batches(6),
            batch=10,
            wait_seconds=0.0,
            lag_log_interval_seconds=0.0,
            stop=stop,
        ),
        10,
    )
    state = await store.state()
    assert (state.applied, state.applied_sequence) == (6, 6)
    assert await rows(store, "SELECT COUNT(*) FROM user_orders WHERE state = 'CONFIRMED'") == [(2,)]
