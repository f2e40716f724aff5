"""ReportingService against a real server in this process (port 0): fed by its consumer
from a source without NATS, product names from a real inventory service here, every
method admin only."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest

from services.reporting.config import ReportingConfig
from services.reporting.service import ClosableSource, ReportingService
from services.reporting.service import create as create_reporting
from shop.order.v1 import order_pb2
from shop.reporting.v1 import reporting_service_pb2 as rpc
from shop.reporting.v1.reporting_service_pb2_grpc import ReportingServiceStub
from tests.helpers import ADMIN, Served, rejected, serving, user
from tests.reporting_helpers import DAY1, FakeMessage, messages, order_events

SKUS = ("SKU-MUG", "SKU-TEA")


class QueuedSource:
    """Hands out the queued messages once, then nothing; the stream's last sequence is
    the last queued one."""

    def __init__(self, queued: list[FakeMessage]) -> None:
        self.queued = queued
        self.last = queued[-1].stream_sequence if queued else 0
        self.closed = False

    async def fetch(self, batch: int, wait_seconds: float) -> Sequence[FakeMessage]:
        taken, self.queued = self.queued[:batch], self.queued[batch:]
        if not taken:
            await asyncio.sleep(min(wait_seconds, 0.01))
        return taken

    async def last_sequence(self) -> int | None:
        return self.last

    async def close(self) -> None:
        self.closed = True


async def caught_up(stub: ReportingServiceStub, wait_seconds: float = 10.0) -> None:
    """Waits until GetLag says no event is left to apply."""
    async with asyncio.timeout(wait_seconds):
        for _ in iter(int, 1):  # until caught up or the timeout
            if not (await stub.GetLag(rpc.GetLagRequest(), metadata=ADMIN)).events_behind:
                return
            await asyncio.sleep(0.01)


@pytest.fixture
async def reporting(
    tmp_path: pathlib.Path, inventory_served: Served
) -> AsyncIterator[tuple[ReportingServiceStub, ReportingService]]:
    datas: list[bytes] = []
    for n in range(12):
        datas += order_events(
            f"o{n:02}",
            "alice" if n % 2 else "bob",
            DAY1 + n * 3600,
            confirm=n % 4 != 0,
            skus=SKUS,
        )
    source = QueuedSource(messages(datas))

    async def sources(config: ReportingConfig) -> ClosableSource:
        return source

    config = ReportingConfig(
        db_path=tmp_path / "reporting.db",
        inventory_target=inventory_served.target,
        nats_url="nats://127.0.0.1:1",  # not dialled: the source is the one above
        consumer_batch_size=7,
        consumer_wait_seconds=0.05,
    )
    service = await create_reporting(config, sources)
    async with serving(service) as served:
        stub = ReportingServiceStub(served.channel)
        await caught_up(stub)
        yield stub, service
    assert source.closed


async def test_reports_of_the_events_applied(
    reporting: tuple[ReportingServiceStub, ReportingService],
) -> None:
    stub, _ = reporting
    lag = await stub.GetLag(rpc.GetLagRequest(), metadata=ADMIN)
    assert (lag.events_behind, lag.stream_reachable, lag.applied_events) == (0, True, 9 * 3 + 3 * 2)
    assert lag.HasField("behind_duration") and lag.last_event_time.ToSeconds() > DAY1

    revenue = await stub.ListDailyRevenue(
        rpc.ListDailyRevenueRequest(start_day="2026-01-01", end_day="2026-01-01"), metadata=ADMIN
    )
    assert [(d.day, d.orders_confirmed, d.revenue.amount_minor) for d in revenue.days] == [
        ("2026-01-01", 9, 9 * 2100)  # o00, o04, o08 cancelled
    ]
    top = await stub.ListTopProducts(rpc.ListTopProductsRequest(limit=5), metadata=ADMIN)
    # Names as the inventory service here has them (its seed names a product sku.title()).
    assert [(p.sku, p.product_name, p.units_sold) for p in top.products] == [
        ("SKU-MUG", "Sku-Mug", 18),
        ("SKU-TEA", "Sku-Tea", 9),
    ]
    pages, token = [], ""
    while True:
        page = await stub.ListSkuSales(
            rpc.ListSkuSalesRequest(
                start_day="2026-01-01", end_day="2026-01-02", page_size=1, page_token=token
            ),
            metadata=ADMIN,
        )
        pages += [(s.day, s.sku, s.units_sold) for s in page.sales]
        token = page.next_page_token
        if not token:
            break
    assert pages == [("2026-01-01", "SKU-MUG", 18), ("2026-01-01", "SKU-TEA", 9)]

    summary = await stub.GetUserOrderSummary(
        rpc.GetUserOrderSummaryRequest(user_id="bob", page_size=4), metadata=ADMIN
    )
    assert (summary.orders_confirmed, summary.orders_cancelled, summary.orders_pending) == (3, 3, 0)
    assert [m.amount_minor for m in summary.spent] == [3 * 2100]
    assert [o.order_id for o in summary.orders] == ["o10", "o08", "o06", "o04"]
    assert summary.orders[1].state == order_pb2.ORDER_STATE_CANCELLED
    assert {line.product_name for line in summary.orders[0].lines} == {"Sku-Mug", "Sku-Tea"}
    rest = await stub.GetUserOrderSummary(
        rpc.GetUserOrderSummaryRequest(user_id="bob", page_token=summary.next_page_token),
        metadata=ADMIN,
    )
    assert [o.order_id for o in rest.orders] == ["o02", "o00"] and not rest.next_page_token


async def test_every_method_needs_the_admin_scope(
    reporting: tuple[ReportingServiceStub, ReportingService],
) -> None:
    stub, _ = reporting
    alice = user("alice")
    for call in (
        stub.GetLag(rpc.GetLagRequest(), metadata=alice),
        stub.ListTopProducts(rpc.ListTopProductsRequest(), metadata=alice),
        stub.ListDailyRevenue(
            rpc.ListDailyRevenueRequest(start_day="2026-01-01", end_day="2026-01-01"),
            metadata=alice,
        ),
        stub.ListSkuSales(
            rpc.ListSkuSalesRequest(start_day="2026-01-01", end_day="2026-01-01"), metadata=alice
        ),
        stub.GetUserOrderSummary(rpc.GetUserOrderSummaryRequest(user_id="alice"), metadata=alice),
    ):
        error = await rejected(call)
        assert (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ADMIN_SCOPE_REQUIRED",
        )


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        ("2026-01-02", "2026-01-01", "end_day"),
        ("2026-01-01", "2027-01-02", "end_day"),
        ("2026-02-30", "2026-03-01", "start_day"),
        ("yesterday", "2026-03-01", "start_day"),
    ],
)
async def test_a_bad_range_of_days_is_invalid(
    reporting: tuple[ReportingServiceStub, ReportingService], start: str, end: str, field: str
) -> None:
    stub, _ = reporting
    error = await rejected(
        stub.ListDailyRevenue(
            rpc.ListDailyRevenueRequest(start_day=start, end_day=end), metadata=ADMIN
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in {v.field for v in error.violations}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (
            lambda stub: stub.GetUserOrderSummary(
                rpc.GetUserOrderSummaryRequest(user_id="alice", page_size=-1), metadata=ADMIN
            ),
            "page_size",
        ),
        (
            lambda stub: stub.GetUserOrderSummary(
                rpc.GetUserOrderSummaryRequest(user_id="not a user id"), metadata=ADMIN
            ),
            "user_id",
        ),
        (
            lambda stub: stub.ListTopProducts(
                rpc.ListTopProductsRequest(limit=101), metadata=ADMIN
            ),
            "limit",
        ),
        (
            lambda stub: stub.ListSkuSales(
                rpc.ListSkuSalesRequest(
                    start_day="2026-01-01", end_day="2026-01-01", page_token="x"
                ),
                metadata=ADMIN,
            ),
            "page_token",
        ),
    ],
)
async def test_field_rules_are_checked(
    reporting: tuple[ReportingServiceStub, ReportingService], call: Any, field: str
) -> None:
    """The contract's field rules (page_size -1 used to answer INTERNAL: the rules of the
    reporting contract were not loaded)."""
    stub, _ = reporting
    error = await rejected(call(stub))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in {v.field for v in error.violations}
