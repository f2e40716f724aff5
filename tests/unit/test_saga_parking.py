"""No saga retries for ever in silence: past the pivot, answers that will never change, a
participant gone for too long, and unexpected errors park the saga (listed, driven no
more) after a bound; an operator's resume drives it on. Each test fails on the code before
parking: its saga looped for ever, which `asyncio.wait_for` turns into a failure here."""

from __future__ import annotations

import asyncio
import pathlib

import grpc
import pytest

from services.common.errors import ErrorKind, ServiceError
from services.order.config import OrderConfig
from services.order.domain import LineItem, Order, OrderState, Phase
from services.order.participants import GrpcParticipants
from services.order.saga import SagaParticipants, SagaRunner, SagaSettings, StepError
from services.order.service import create as create_order
from services.order.store import OrderStore
from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as rpc
from shop.order.v1.order_service_pb2_grpc import OrderServiceStub
from tests.helpers import ADMIN, Served, rejected, serving, user

SETTINGS = SagaSettings.of(
    OrderConfig(
        step_retry_seconds=1, max_backoff_seconds=0.05, hold_seconds=60, max_step_failures=3
    )
)
BOUND_SECONDS = 10  # far above what 3 failures with 0.05 s backoff take


class Refusing:
    """Participants that succeed, except the steps named in `refuse`, which fail with the
    given error until `refuse` is emptied."""

    def __init__(self, refuse: dict[str, StepError]) -> None:
        self.refuse = refuse
        self.calls: list[str] = []

    async def _step(self, name: str) -> None:
        self.calls.append(name)
        if name in self.refuse:
            raise self.refuse[name]

    async def reserve(self, order: Order, hold_seconds: float) -> list[LineItem]:
        await self._step("reserve")
        return [LineItem(i.sku, i.quantity, 100, "USD") for i in order.items]

    async def authorize(self, order: Order) -> None:
        await self._step("authorize")

    async def commit(self, order: Order) -> None:
        await self._step("commit")

    async def capture(self, order: Order) -> None:
        await self._step("capture")

    async def void(self, order: Order) -> None:
        await self._step("void")

    async def release(self, order: Order) -> None:
        await self._step("release")


def refusal(participant: str, kind: ErrorKind, reason: str) -> StepError:
    return StepError(participant, ServiceError(kind, reason, reason.lower()), transient=False)


async def start(
    tmp_path: pathlib.Path, participants: SagaParticipants, user: str = "alice"
) -> tuple[OrderStore, SagaRunner, str]:
    store = OrderStore(tmp_path / "order.db")
    order, _ = await store.create("o1", user, "r1", (LineItem("SKU-TEA", 1),), 0.0)
    runner = SagaRunner(store, participants, SETTINGS)
    await asyncio.wait_for(runner.ensure(order.order_id), BOUND_SECONDS)
    return store, runner, order.order_id


async def test_a_capture_refused_for_good_parks_the_saga_and_resume_finishes_it(
    tmp_path: pathlib.Path,
) -> None:
    participants = Refusing(
        {"capture": refusal("payment", ErrorKind.FAILED_PRECONDITION, "PAYMENT_VOIDED")}
    )
    store, runner, order_id = await start(tmp_path, participants)
    assert participants.calls.count("capture") == SETTINGS.max_step_failures
    [parked] = await store.parked()
    assert (parked.order_id, parked.phase, parked.reason) == (
        order_id,
        Phase.COMMITTING,
        "CAPTURE_REFUSED",
    )
    assert "PAYMENT_VOIDED" in parked.detail
    assert (await store.order(order_id)).state is OrderState.PENDING  # callers see it unfinished
    assert order_id not in await store.open_sagas(now=1e12)  # no instance adopts it
    await asyncio.wait_for(runner.ensure(order_id), BOUND_SECONDS)  # a repeat: still parked
    assert participants.calls.count("capture") == SETTINGS.max_step_failures

    participants.refuse.clear()  # the operator fixed the payment
    assert await store.unpark(order_id)
    await asyncio.wait_for(runner.ensure(order_id), BOUND_SECONDS)
    assert (await store.order(order_id)).state is OrderState.CONFIRMED
    assert await store.parked() == []


async def test_a_release_refused_for_good_parks_a_compensation(tmp_path: pathlib.Path) -> None:
    participants = Refusing(
        {
            "authorize": refusal("payment", ErrorKind.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"),
            "release": refusal("inventory", ErrorKind.FAILED_PRECONDITION, "RESERVATION_COMMITTED"),
        }
    )
    store, _, _ = await start(tmp_path, participants)
    [parked] = await store.parked()
    assert (parked.phase, parked.reason) == (Phase.COMPENSATING, "RELEASE_REFUSED")
    assert participants.calls.count("release") == SETTINGS.max_step_failures


async def test_a_participant_gone_past_the_bound_parks_the_saga(tmp_path: pathlib.Path) -> None:
    gone = StepError(
        "payment", ServiceError(ErrorKind.UNAVAILABLE, "", "no healthy upstream"), transient=True
    )
    store = OrderStore(tmp_path / "order.db")
    order, _ = await store.create("o1", "alice", "r1", (LineItem("SKU-TEA", 1),), 0.0)
    settings = SagaSettings.of(
        OrderConfig(
            step_retry_seconds=1, max_backoff_seconds=0.05, hold_seconds=60, park_after_seconds=0.3
        )
    )
    runner = SagaRunner(store, Refusing({"capture": gone}), settings)
    await asyncio.wait_for(runner.ensure(order.order_id), BOUND_SECONDS)
    [parked] = await store.parked()
    assert (parked.phase, parked.reason) == (Phase.COMMITTING, "CAPTURE_UNAVAILABLE")


async def test_unexpected_errors_park_the_saga_after_the_bound(tmp_path: pathlib.Path) -> None:
    participants = Refusing({})
    store = OrderStore(tmp_path / "order.db")
    order, _ = await store.create("o1", "alice", "r1", (LineItem("SKU-TEA", 1),), 0.0)
    failures = 0

    async def broken(*args: object) -> bool:
        nonlocal failures
        failures += 1
        raise RuntimeError("a bug in recording the reservation")

    store.record_reserved = broken  # type: ignore[method-assign,assignment]
    runner = SagaRunner(store, participants, SETTINGS)
    await asyncio.wait_for(runner.ensure(order.order_id), BOUND_SECONDS)
    assert failures == SETTINGS.max_step_failures
    [parked] = await store.parked()
    assert (parked.phase, parked.reason) == (Phase.STARTED, "UNEXPECTED_ERROR")
    assert "RuntimeError: a bug in recording" in parked.detail


async def test_a_call_grpc_cannot_make_is_a_final_step_failure(
    inventory_served: Served,
) -> None:
    """A user id gRPC cannot carry (an order an older version let in): the call raised a
    non-gRPC exception, which the saga retried every 2 s for ever."""
    participants = GrpcParticipants(inventory_served.target, inventory_served.target, 2.0)
    order = Order(
        order_id="o1",
        user_id="zoë",
        request_id="r1",
        items=(LineItem("SKU-TEA", 1),),
        state=OrderState.PENDING,
        cancel_reason="",
        total_minor=None,
        currency="",
        created_at=0.0,
        updated_at=0.0,
        seq=1,
    )
    try:
        with pytest.raises(StepError) as failed:
            await participants.reserve(order, 60)
    finally:
        await participants.close()
    assert not failed.value.transient
    assert (failed.value.error.kind, failed.value.error.reason) == (
        ErrorKind.INTERNAL,
        "CALL_FAILED",
    )


async def test_an_order_whose_user_grpc_cannot_carry_ends_parked_not_pending_for_ever(
    tmp_path: pathlib.Path, inventory_served: Served, payment_served: Served
) -> None:
    participants = GrpcParticipants(inventory_served.target, payment_served.target, 2.0)
    try:
        store, _, order_id = await start(tmp_path, participants, user="zoë")
    finally:
        await participants.close()
    saga = await store.saga(order_id)
    assert saga.failure is not None and saga.failure.reason == "CALL_FAILED"
    [parked] = await store.parked()
    assert (parked.phase, parked.reason) == (Phase.COMPENSATING, "RELEASE_REFUSED")


# The operator's view over gRPC: the real order service, in this process.


async def test_operators_list_and_resume_parked_orders(
    tmp_path: pathlib.Path, inventory_served: Served, payment_served: Served
) -> None:
    config = OrderConfig(
        db_path=tmp_path / "order.db",
        inventory_target=inventory_served.target,
        payment_target=payment_served.target,
    )
    service = await create_order(config)
    async with serving(service) as served:
        store, orders = service.store, OrderServiceStub(served.channel)
        for n in range(3):  # placed and parked before any saga ran, as a stuck one would be
            await store.create(f"o{n}", "alice", f"r{n}", (LineItem("SKU-TEA", 1),), 0.0)
            lease = await store.acquire(f"o{n}", "test", 60)
            assert lease is not None
            assert await store.park(lease, Phase.STARTED, "UNEXPECTED_ERROR", "a bug", 1.0)

        refused = await rejected(
            orders.ListParkedOrders(rpc.ListParkedOrdersRequest(), metadata=user("alice"))
        )
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ADMIN_SCOPE_REQUIRED",
        )
        first = await orders.ListParkedOrders(
            rpc.ListParkedOrdersRequest(page_size=2), metadata=ADMIN
        )
        rest = await orders.ListParkedOrders(
            rpc.ListParkedOrdersRequest(page_size=2, page_token=first.next_page_token),
            metadata=ADMIN,
        )
        listed = [*first.parked_orders, *rest.parked_orders]
        assert [p.order_id for p in listed] == ["o0", "o1", "o2"]
        assert rest.next_page_token == ""
        assert (listed[0].user_id, listed[0].saga_phase, listed[0].reason, listed[0].detail) == (
            "alice",
            "STARTED",
            "UNEXPECTED_ERROR",
            "a bug",
        )
        assert (
            await orders.GetOrder(rpc.GetOrderRequest(order_id="o0"), metadata=user("alice"))
        ).order.state == order_pb2.ORDER_STATE_PENDING

        resumed = await orders.ResumeOrder(rpc.ResumeOrderRequest(order_id="o0"), metadata=ADMIN)
        assert resumed.order.state == order_pb2.ORDER_STATE_CONFIRMED
        again = await rejected(
            orders.ResumeOrder(rpc.ResumeOrderRequest(order_id="o0"), metadata=ADMIN)
        )
        assert (again.code, again.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "ORDER_NOT_PARKED",
        )
        ghost = await rejected(
            orders.ResumeOrder(rpc.ResumeOrderRequest(order_id="nope"), metadata=ADMIN)
        )
        assert (ghost.code, ghost.reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
        left = await orders.ListParkedOrders(rpc.ListParkedOrdersRequest(), metadata=ADMIN)
        assert [p.order_id for p in left.parked_orders] == ["o1", "o2"]
