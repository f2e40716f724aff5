"""OrderService over gRPC: check the request, call the store and the saga, encode."""

from __future__ import annotations

import asyncio
import uuid
from typing import TypeAlias

import grpc

from services.common import pagination, validation
from services.common.convert import money, timestamp
from services.common.errors import ServiceError, failed_precondition
from services.common.identity import caller, require_admin
from services.order import domain
from services.order.config import ANSWER_MARGIN_SECONDS, OrderConfig
from services.order.saga import SagaRunner
from services.order.store import OrderStore
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2 as pb
from shop.order.v1 import order_service_pb2 as rpc
from shop.order.v1 import order_service_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext


class OrderServicer(order_service_pb2_grpc.OrderServiceServicer):
    def __init__(self, store: OrderStore, saga: SagaRunner, config: OrderConfig) -> None:
        self._store = store
        self._saga = saga
        self._config = config
        self._create_wait = config.create_wait_seconds
        # Orders being placed for callers that may have left: held until done, since the
        # loop keeps tasks only weakly.
        self._placing: set[asyncio.Task[domain.Order]] = set()

    async def CreateOrder(
        self, request: rpc.CreateOrderRequest, context: Context
    ) -> rpc.CreateOrderResponse:
        who = caller(context)
        check_create_order(request)
        items = tuple(domain.LineItem(i.sku, i.quantity) for i in request.line_items)
        # Shielded: a caller who leaves (cancels, or its deadline passes) while the order is
        # written must not leave it without its saga. The write commits anyway (group commit
        # keeps it), and unstarted, the saga would wait for the recovery loop.
        placing = asyncio.create_task(self._place(who.user_id, request.request_id, items))
        self._placing.add(placing)
        placing.add_done_callback(self._placing.discard)
        order = await asyncio.shield(placing)
        await self._wait_for_saga(order.order_id, context)
        return rpc.CreateOrderResponse(
            order=_order_to_proto(await self._store.answer(order.order_id))
        )

    async def GetOrder(
        self, request: rpc.GetOrderRequest, context: Context
    ) -> rpc.GetOrderResponse:
        who = caller(context)
        validation.require_valid(request)
        return rpc.GetOrderResponse(
            order=_order_to_proto(await self._store.order(request.order_id, who.user_id))
        )

    async def ListOrders(
        self, request: rpc.ListOrdersRequest, context: Context
    ) -> rpc.ListOrdersResponse:
        who = caller(context)
        violations = validation.violations(request)
        size = pagination.page_size(request.page_size)
        before = pagination.decode_number(request.page_token, violations)
        violations.raise_if_any()
        page = await self._store.orders(who.user_id, before, size + 1)
        more = len(page) > size
        page = page[:size]
        return rpc.ListOrdersResponse(
            orders=[_order_to_proto(o) for o in page],
            next_page_token=pagination.encode_token(str(page[-1].seq)) if more else "",
        )

    async def ListOrderEvents(
        self, request: rpc.ListOrderEventsRequest, context: Context
    ) -> rpc.ListOrderEventsResponse:
        who = caller(context)
        violations = validation.violations(request)
        size = pagination.page_size(request.page_size)
        after = pagination.decode_number(request.page_token, violations)
        violations.raise_if_any()
        page = await self._store.events(request.order_id, who.user_id, after or 0, size + 1)
        more = len(page) > size
        page = page[:size]
        return rpc.ListOrderEventsResponse(
            events=[_event_to_proto(e) for e in page],
            next_page_token=pagination.encode_token(str(page[-1].sequence)) if more else "",
        )

    async def CancelOrder(
        self, request: rpc.CancelOrderRequest, context: Context
    ) -> rpc.CancelOrderResponse:
        who = caller(context)
        validation.require_valid(request)
        order = await self._store.order(request.order_id, who.user_id)
        if order.state is domain.OrderState.CONFIRMED:
            raise _already_confirmed(order.order_id)
        if order.state is domain.OrderState.PENDING:
            if not await self._store.request_cancel(order.order_id):
                # Too late to ask, unless the saga is already cancelling on its own.
                phase = (await self._store.saga(order.order_id)).phase
                if phase in (domain.Phase.COMMITTING, domain.Phase.CONFIRMED):
                    raise _already_confirmed(order.order_id)
            await self._wait_for_saga(order.order_id, context)
        return rpc.CancelOrderResponse(
            order=_order_to_proto(await self._store.order(order.order_id))
        )

    async def ListParkedOrders(
        self, request: rpc.ListParkedOrdersRequest, context: Context
    ) -> rpc.ListParkedOrdersResponse:
        require_admin(caller(context))
        violations = validation.violations(request)
        size = pagination.page_size(request.page_size)
        after = pagination.decode_number(request.page_token, violations)
        violations.raise_if_any()
        page = await self._store.parked(after or 0, size + 1)
        more = len(page) > size
        page = page[:size]
        return rpc.ListParkedOrdersResponse(
            parked_orders=[_parked_to_proto(p) for p in page],
            next_page_token=pagination.encode_token(str(page[-1].seq)) if more else "",
        )

    async def ResumeOrder(
        self, request: rpc.ResumeOrderRequest, context: Context
    ) -> rpc.ResumeOrderResponse:
        require_admin(caller(context))
        validation.require_valid(request)
        order = await self._store.order(request.order_id)
        if not await self._store.unpark(order.order_id):
            raise failed_precondition(
                "ORDER_NOT_PARKED",
                f"order {order.order_id!r} is not parked: its saga is running or done",
                order_id=order.order_id,
            )
        await self._wait_for_saga(order.order_id, context)
        return rpc.ResumeOrderResponse(
            order=_order_to_proto(await self._store.order(order.order_id))
        )

    async def placed(self) -> None:
        """Waits for the orders being placed (at stop: each starts its saga before the
        saga runner stops)."""
        await asyncio.gather(*self._placing, return_exceptions=True)

    async def _place(
        self, user_id: str, request_id: str, items: tuple[domain.LineItem, ...]
    ) -> domain.Order:
        """Writes the order (or finds the one the request id made) and starts its saga."""
        order_id = uuid.uuid4().hex
        first = self._saga.first_lease(order_id)  # this instance drives what it creates
        quota = domain.Quota(
            max_open_orders=self._config.max_open_orders_per_user,
            max_declines=self._config.decline_limit,
            decline_window_seconds=self._config.decline_window_seconds,
        )
        order, created = await self._store.create(
            *(order_id, user_id, request_id, items),
            lease=first.lease,
            lease_seconds=first.seconds,
            quota=quota,
        )
        if created:
            self._saga.crash_point("after_persist")
            self._saga.ensure(order.order_id, first)
        else:  # a repeat: driven here only if no instance drives it
            self._saga.ensure(order.order_id)
        return order

    async def _wait_for_saga(self, order_id: str, context: Context) -> None:
        """Waits for the saga to end, but answers in time: a PENDING order goes on alone
        (the wait never cancels the saga: it outlives an impatient caller)."""
        wait = self._create_wait
        remaining = context.time_remaining()
        if remaining is not None:
            wait = min(wait, remaining - ANSWER_MARGIN_SECONDS)
        if wait > 0:
            await self._saga.wait(order_id, wait)


def _already_confirmed(order_id: str) -> ServiceError:
    return failed_precondition(
        "ORDER_ALREADY_CONFIRMED",
        f"order {order_id!r} is confirmed (or being confirmed) and cannot be cancelled",
        order_id=order_id,
    )


def check_create_order(request: rpc.CreateOrderRequest) -> None:
    """Every check of CreateOrder before the order is written: INVALID_ARGUMENT, with
    every violation, unless the request keeps them all."""
    violations = validation.violations(request)
    validation.check_each_sku_once(
        violations, rpc.CreateOrderRequest, "line_items", request.line_items
    )
    violations.raise_if_any()


# OrderEvent's field for each fact, by the fact's full name (its envelope's type).
_FACT_FIELDS = {
    fact.full_name: field.name
    for field in rpc.OrderEvent.DESCRIPTOR.oneofs_by_name["fact"].fields
    if (fact := field.message_type) is not None
}


def _event_to_proto(entry: envelope_pb2.EventEnvelope) -> rpc.OrderEvent:
    """A log entry as ListOrderEvents shows it: its fact decoded into the field for its
    type (none set for a type this version does not know)."""
    event = rpc.OrderEvent(
        event_id=entry.event_id,
        sequence=entry.sequence,
        type=entry.type,
        occur_time=entry.occurred_at,
    )
    name = _FACT_FIELDS.get(entry.type)
    if name is not None:
        getattr(event, name).ParseFromString(entry.payload)
    return event


def _parked_to_proto(p: domain.ParkedSaga) -> rpc.ParkedOrder:
    return rpc.ParkedOrder(
        order_id=p.order_id,
        user_id=p.user_id,
        saga_phase=p.phase.value,
        reason=p.reason,
        detail=p.detail,
        park_time=timestamp(p.parked_at),
    )


def _order_to_proto(o: domain.Order) -> pb.Order:
    message = pb.Order(
        order_id=o.order_id,
        user_id=o.user_id,
        request_id=o.request_id,
        line_items=[
            pb.LineItem(
                sku=i.sku,
                quantity=i.quantity,
                unit_price=(
                    money(i.price_minor, i.currency) if i.price_minor is not None else None
                ),
            )
            for i in o.items
        ],
        state=f"ORDER_STATE_{o.state.value}",
        cancel_reason=o.cancel_reason,
        create_time=timestamp(o.created_at),
        update_time=timestamp(o.updated_at),
    )
    if o.total_minor is not None:
        message.total.CopyFrom(money(o.total_minor, o.currency))
    return message
