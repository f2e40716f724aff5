"""ReportingService over gRPC: admin only; check the request, read the read model, encode.
Every answer comes from the tables the consumer filled; nothing is composed per read."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TypeAlias

import grpc
from google.protobuf import duration_pb2

from services.common import pagination, validation
from services.common.convert import money, timestamp
from services.common.errors import Violations
from services.common.identity import caller, require_admin
from services.reporting import consumer, store
from services.reporting.domain import OrderState
from services.reporting.store import ReportingStore
from shop.order.v1 import order_pb2
from shop.reporting.v1 import reporting_pb2 as pb
from shop.reporting.v1 import reporting_service_pb2 as rpc
from shop.reporting.v1 import reporting_service_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext

MAX_DAYS = 366
"""The longest range of days one report spans."""
DEFAULT_TOP = 10

_STATES = {
    OrderState.PENDING: order_pb2.ORDER_STATE_PENDING,
    OrderState.CONFIRMED: order_pb2.ORDER_STATE_CONFIRMED,
    OrderState.CANCELLED: order_pb2.ORDER_STATE_CANCELLED,
}


class ReportingServicer(reporting_service_pb2_grpc.ReportingServiceServicer):
    def __init__(self, store: ReportingStore, source: Callable[[], consumer.Source | None]) -> None:
        self._store = store
        self._source = source

    async def ListSkuSales(
        self, request: rpc.ListSkuSalesRequest, context: Context
    ) -> rpc.ListSkuSalesResponse:
        require_admin(caller(context))
        violations = validation.violations(request)
        _check_days(request.start_day, request.end_day, violations)
        size = pagination.page_size(request.page_size)
        cursor = pagination.decode_token(request.page_token, violations)
        after = None
        if cursor is not None:
            parts = cursor.split("|")
            if len(parts) != 3:
                violations.add("page_token", "is not a token this method returned")
            else:
                after = (parts[0], parts[1], parts[2])
        violations.raise_if_any()
        rows = await self._store.sku_sales(
            request.start_day, request.end_day, request.sku, after, size + 1
        )
        more = len(rows) > size
        rows = rows[:size]
        return rpc.ListSkuSalesResponse(
            sales=[
                pb.SkuDaySales(
                    day=r.day,
                    sku=r.sku,
                    product_name=r.product_name,
                    units_sold=r.units,
                    revenue=money(r.revenue_minor, r.currency),
                )
                for r in rows
            ],
            next_page_token=(
                pagination.encode_token(f"{rows[-1].day}|{rows[-1].sku}|{rows[-1].currency}")
                if more
                else ""
            ),
        )

    async def ListDailyRevenue(
        self, request: rpc.ListDailyRevenueRequest, context: Context
    ) -> rpc.ListDailyRevenueResponse:
        require_admin(caller(context))
        violations = validation.violations(request)
        _check_days(request.start_day, request.end_day, violations)
        violations.raise_if_any()
        days = await self._store.daily_revenue(request.start_day, request.end_day)
        return rpc.ListDailyRevenueResponse(
            days=[
                pb.DayRevenue(
                    day=d.day,
                    orders_confirmed=d.orders,
                    revenue=money(d.revenue_minor, d.currency),
                )
                for d in days
            ]
        )

    async def ListTopProducts(
        self, request: rpc.ListTopProductsRequest, context: Context
    ) -> rpc.ListTopProductsResponse:
        require_admin(caller(context))
        validation.require_valid(request)
        found = await self._store.top_products(request.limit or DEFAULT_TOP)
        return rpc.ListTopProductsResponse(
            products=[
                pb.ProductSales(
                    sku=p.sku,
                    product_name=p.product_name,
                    units_sold=p.units,
                    revenue=money(p.revenue_minor, p.currency),
                )
                for p in found
            ]
        )

    async def GetUserOrderSummary(
        self, request: rpc.GetUserOrderSummaryRequest, context: Context
    ) -> rpc.GetUserOrderSummaryResponse:
        require_admin(caller(context))
        violations = validation.violations(request)
        size = pagination.page_size(request.page_size)
        cursor = pagination.decode_token(request.page_token, violations)
        after = None
        if cursor is not None:
            placed, _, order_id = cursor.partition("|")
            try:
                after = (float(placed), order_id)
            except ValueError:
                violations.add("page_token", "is not a token this method returned")
        violations.raise_if_any()
        summary = await self._store.user_summary(request.user_id, after, size + 1)
        orders = summary.orders[:size]
        more = len(summary.orders) > size
        return rpc.GetUserOrderSummaryResponse(
            user_id=summary.user_id,
            orders_confirmed=summary.counts[OrderState.CONFIRMED],
            orders_cancelled=summary.counts[OrderState.CANCELLED],
            orders_pending=summary.counts[OrderState.PENDING],
            spent=[money(amount, currency) for currency, amount in sorted(summary.spent.items())],
            orders=[_order(o) for o in orders],
            next_page_token=(
                pagination.encode_token(f"{orders[-1].placed_at!r}|{orders[-1].order_id}")
                if more
                else ""
            ),
        )

    async def GetLag(self, request: rpc.GetLagRequest, context: Context) -> rpc.GetLagResponse:
        require_admin(caller(context))
        found = await consumer.lag(self._store, self._source())
        response = rpc.GetLagResponse(
            events_behind=found.events_behind or 0,
            applied_sequence=found.applied_sequence,
            stream_sequence=found.stream_sequence or 0,
            stream_reachable=found.stream_sequence is not None,
            applied_events=found.applied,
            skipped_events=found.skipped,
            parked_events=found.parked,
        )
        if found.seconds_behind is not None:
            response.behind_duration.CopyFrom(_duration(found.seconds_behind))
        if found.last_occurred_at is not None:
            response.last_event_time.CopyFrom(timestamp(found.last_occurred_at))
        return response


def _check_days(start: str, end: str, violations: Violations) -> None:
    """The range's own rules, past each day's pattern (checked by the field rules)."""
    days = []
    for name, text in (("start_day", start), ("end_day", end)):
        try:
            days.append(datetime.date.fromisoformat(text))
        except ValueError:
            if not violations.has(name):
                violations.add(name, "is not a day (YYYY-MM-DD)")
    if len(days) == 2:
        if days[1] < days[0]:
            violations.add("end_day", "is before start_day")
        elif (days[1] - days[0]).days >= MAX_DAYS:
            violations.add("end_day", f"is more than {MAX_DAYS} days after start_day")


def _duration(seconds: float) -> duration_pb2.Duration:
    found = duration_pb2.Duration()
    found.FromNanoseconds(round(seconds * 1e9))
    return found


def _order(o: store.UserOrder) -> pb.UserOrder:
    found = pb.UserOrder(
        order_id=o.order_id,
        state=_STATES[o.state],
        lines=[
            pb.ReportLine(
                sku=line.sku,
                product_name=line.product_name,
                quantity=line.quantity,
                unit_price=(
                    money(line.unit_price_minor, line.currency)
                    if line.unit_price_minor is not None
                    else None
                ),
            )
            for line in o.lines
        ],
        cancel_reason=o.cancel_reason,
        place_time=timestamp(o.placed_at),
        update_time=timestamp(o.updated_at),
    )
    if o.total_minor is not None:
        found.total.CopyFrom(money(o.total_minor, o.currency))
    return found
