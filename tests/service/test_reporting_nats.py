"""The reporting service's consumer against the real nats-server: it applies every event
of SHOP_EVENTS from its durable, dedups an event published twice (under two message ids,
as a relay re-publishing after the duplicates window would), parks a poison message
without blocking the events behind it, skips an unknown type, and --rebuild makes, from
the stream's start into a new database, the same tables as the live service's."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from services.common.jetstream import STREAM, JetStreamPublisher, JetStreamSettings, open_publisher
from services.reporting import nats_source, rebuild
from services.reporting.config import ReportingConfig
from services.reporting.domain import decode
from services.reporting.store import ReportingStore
from shop.events.v1 import envelope_pb2
from shop.reporting.v1 import reporting_service_pb2 as rpc
from shop.reporting.v1.reporting_service_pb2_grpc import ReportingServiceStub
from shopmesh.nats_server import NatsServer
from tests.helpers import ADMIN, Served, run_command, serving
from tests.nats_harness import running_nats
from tests.reporting_helpers import DAY1, order_events, read_model_query
from tests.stores import rows

SKUS = ("SKU-MUG", "SKU-TEA")
TABLES = (
    "applied_events",
    "product_names",
    "sku_day_sales",
    "product_sales",
    "day_revenue",
    "user_orders",
    "user_order_lines",
    "projection_state",
)


@pytest.fixture
def nats(tmp_path: pathlib.Path) -> Iterator[NatsServer]:
    with running_nats(tmp_path / "nats-run") as server:
        yield server


@pytest.fixture
async def publisher(nats: NatsServer) -> AsyncIterator[JetStreamPublisher]:
    found = await open_publisher(JetStreamSettings(url=nats.url))
    assert await found.connection.wait_ready(10)
    yield found
    await found.close()


async def publish(publisher: JetStreamPublisher, data: bytes, msg_id: str = "") -> None:
    event = envelope_pb2.EventEnvelope.FromString(data)
    await publisher.publish(event.type, msg_id or event.event_id, data)


def config_for(nats: NatsServer, inventory: Served, db: pathlib.Path) -> ReportingConfig:
    return ReportingConfig(
        db_path=db,
        nats_url=nats.url,
        inventory_target=inventory.target,
        consumer_wait_seconds=0.2,
        consumer_retry_seconds=0.1,
    )


async def caught_up(stub: ReportingServiceStub, wait_seconds: float = 20.0) -> rpc.GetLagResponse:
    async with asyncio.timeout(wait_seconds):
        for _ in iter(int, 1):
            lag: rpc.GetLagResponse = await stub.GetLag(rpc.GetLagRequest(), metadata=ADMIN)
            if lag.stream_reachable and lag.events_behind == 0 and lag.stream_sequence:
                return lag
            await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


async def test_the_consumer_applies_dedups_parks_and_rebuilds(
    nats: NatsServer,
    publisher: JetStreamPublisher,
    inventory_served: Served,
    tmp_path: pathlib.Path,
) -> None:
    datas: list[bytes] = []
    for n in range(40):
        datas += order_events(
            f"o{n:02}", f"user{n % 5}", DAY1 + n * 1800, confirm=n % 3 != 0, skus=SKUS
        )
    for data in datas[:60]:
        await publish(publisher, data)
    live_config = config_for(nats, inventory_served, tmp_path / "live.db")
    async with serving(await nats_source.create(live_config)) as served:
        stub = ReportingServiceStub(served.channel)
        await caught_up(stub)
        # Published again under another message id: the stream stores it twice, the
        # consumer applies it once.
        await publish(publisher, datas[0], msg_id=str(uuid.uuid4()))
        await publisher.publish("shop.order.v1.OrderConfirmed", str(uuid.uuid4()), b"\xff\x00junk")
        newer = envelope_pb2.EventEnvelope(
            event_id=str(uuid.uuid4()), type="shop.order.v9.OrderTeleported", payload=b""
        )
        await publisher.publish(newer.type, newer.event_id, newer.SerializeToString())
        for data in datas[60:]:  # behind the poison message
            await publish(publisher, data)
        lag = await caught_up(stub)
        assert lag.stream_sequence == len(datas) + 3
        assert (lag.applied_events, lag.skipped_events, lag.parked_events) == (len(datas), 1, 1)
        revenue = await stub.ListDailyRevenue(
            rpc.ListDailyRevenueRequest(start_day="2026-01-01", end_day="2026-01-01"),
            metadata=ADMIN,
        )
        confirmed = sum(1 for n in range(40) if n % 3 != 0)
        assert sum(d.orders_confirmed for d in revenue.days) == confirmed
        assert sum(d.revenue.amount_minor for d in revenue.days) == confirmed * 2100

    # The rebuild, into a new database, from the stream's first event.
    rebuilt_config = config_for(nats, inventory_served, tmp_path / "rebuilt.db")
    assert await rebuild.rebuild(rebuilt_config) == len(datas) + 3
    live = ReportingStore(live_config.db_path)
    rebuilt = ReportingStore(rebuilt_config.db_path)
    try:
        for table in TABLES:
            query = read_model_query(table)
            assert await rows(rebuilt, query) == await rows(live, query), table
    finally:
        live.close()
        rebuilt.close()
    # The rebuild's durable is gone; the live one is kept.
    source = await nats_source.open_source(live_config)
    try:
        assert await source.connection.wait_ready(10)
        names = await source.connection.js.consumers_info(STREAM)
        assert [c.name for c in names] == ["reporting"]
    finally:
        await source.close()


async def test_a_crashed_rebuilds_consumer_is_removed_by_the_server_once_unused(
    nats: NatsServer, tmp_path: pathlib.Path
) -> None:
    """A rebuild that dies before deleting its durable (as kill -9 would) leaves it to the
    server, which removes it after its inactive threshold (1 s here, an hour by default)."""
    config = ReportingConfig(
        db_path=tmp_path / "r.db", nats_url=nats.url, rebuild_consumer_inactive_seconds=1.0
    )
    crashed = await nats_source.open_source(
        config, "reporting-rebuild-crashed", config.rebuild_consumer_inactive_seconds
    )
    assert await crashed.connection.wait_ready(10)
    await crashed.close()  # no delete_consumer: what a crash leaves
    live = await nats_source.open_source(config)
    try:
        assert await live.connection.wait_ready(10)
        found = {c.name for c in await live.connection.js.consumers_info(STREAM)}
        assert "reporting-rebuild-crashed" in found, found
        async with asyncio.timeout(20):
            while "reporting-rebuild-crashed" in found:
                await asyncio.sleep(0.2)
                found = {c.name for c in await live.connection.js.consumers_info(STREAM)}
        assert found == {"reporting"}  # the live one is kept
    finally:
        await live.close()


async def test_rebuild_refuses_a_database_that_holds_a_read_model(
    nats: NatsServer,
    publisher: JetStreamPublisher,
    inventory_served: Served,
    tmp_path: pathlib.Path,
) -> None:
    for data in order_events("o1", "ann", DAY1, confirm=True, skus=SKUS):
        await publish(publisher, data)
    config = config_for(nats, inventory_served, tmp_path / "once.db")
    await rebuild.rebuild(config)
    with pytest.raises(rebuild.NotEmpty):
        await rebuild.rebuild(dataclasses.replace(config))


def test_the_rebuild_command_refuses_without_nats_or_into_a_used_database(
    nats: NatsServer,
    publisher: JetStreamPublisher,
    inventory_served: Served,
    tmp_path: pathlib.Path,
) -> None:
    command = [sys.executable, "-m", "services.reporting", "--rebuild"]
    no_nats = run_command([*command, "--db-path", str(tmp_path / "a.db")], expect=2)
    assert "needs --nats-url" in no_nats.stderr
    used = tmp_path / "used.db"
    store = ReportingStore(used)
    store.close()
    flags = ["--db-path", str(used), "--nats-url", nats.url]
    flags += ["--inventory-target", inventory_served.target]
    assert run_command([*command, *flags], timeout=60).returncode == 0  # an empty stream
    seeded = ReportingStore(used)
    try:
        asyncio.run(
            seeded.apply(
                [decode(order_events("o1", "ann", DAY1, confirm=True)[0], 1)], {"SKU-TEA": "t"}
            )
        )
    finally:
        seeded.close()
    refused = run_command([*command, *flags], expect=1, timeout=60)
    assert "already holds a read model" in refused.stderr
