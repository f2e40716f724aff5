"""A property-based model of the saga and its ledgers (hypothesis stateful testing) against
the real services as processes, publishing their events to a real NATS server that the
notification and reporting services consume: random sequences of orders, duplicate
requests, cancels, a hung payment service, kill -9 of the order service, of NATS and of a
consumer, with the ledger invariants checked after every step; at the end everything is
final and balanced, and, once the events are quiet, every event was sent, every final
order notified once and the read model's totals equal the ledgers'.

`make test` runs a fast profile; `make chaos` (SHOPMESH_CHAOS=1) a longer one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any, ClassVar

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from services.common.status import error_details
from shop.order.v1 import order_pb2 as pb
from shop.order.v1 import order_service_pb2 as rpc
from shop.payment.v1 import payment_pb2
from shopmesh.check import check_databases, check_events, wait_for_quiet
from shopmesh.seed import write_seed
from tests.helpers import (
    Client,
    Ledger,
    assert_calls_resolved,
    assert_invariants,
    record_fault,
    user,
)
from tests.stack import DatabaseFactory, Stack, restart, start_stack

PRODUCTS = {
    "SKU-TEA": (450, 200),
    "SKU-MUG": (1299, 20),
    "SKU-LAST": (25000, 1),
    "SKU-NONE": (100, 0),
}
ACCOUNTS = {"alice": 50_000, "bob": 3_000, "carol": 0}
CHAOS = os.environ.get("SHOPMESH_CHAOS") == "1"
QUIET_SECONDS = 60.0
"""How long the events may take to settle after the last step (a consumer's ack wait is
2 s here: tests/stack.py)."""
PROFILE = settings(
    max_examples=15 if CHAOS else 6,
    stateful_step_count=40 if CHAOS else 25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=not CHAOS,
    database=None,
)


@pytest.fixture(scope="module")
def model_stack(
    tmp_path_factory: pytest.TempPathFactory, new_databases: DatabaseFactory
) -> Iterator[tuple[Stack, Client]]:
    workdir = tmp_path_factory.mktemp("model")
    seed = write_seed(workdir / "seed.json", PRODUCTS, ACCOUNTS)
    stack = start_stack(
        workdir / "stack",
        seed,
        databases=new_databases(workdir / "stack"),
        events=True,
        order_settings={
            "call_timeout_seconds": "0.5",
            "step_retry_seconds": "1",
            "max_backoff_seconds": "0.2",
            "create_wait_seconds": "3",
        },
    )
    client = Client(stack)
    yield stack, client
    client.close()
    stack.stop()


class SagaModel(RuleBasedStateMachine):
    stack: ClassVar[Stack]
    client: ClassVar[Client]
    calls: ClassVar[dict[str, list[tuple[str, str]]]] = {u: [] for u in ACCOUNTS}
    serial: ClassVar[int] = 0
    kills: ClassVar[int] = 0
    nats_kills: ClassVar[int] = 0
    consumer_kills: ClassVar[int] = 0

    @initialize()
    def ready(self) -> None:
        # request id -> (user, items, order id)
        self.placed: dict[str, tuple[str, list[tuple[str, int]], str]] = {}
        self.settled: dict[str, int] = {}  # order id -> amount captured, once the order is final

    def _pick(self, index: int) -> str | None:
        """A placed request id. Draws never depend on what the live system answered (an
        index, not a choice among results), so hypothesis can replay a run."""
        return sorted(self.placed)[index % len(self.placed)] if self.placed else None

    def _request_id(self) -> str:
        SagaModel.serial += 1
        return f"model-{os.getpid()}-{SagaModel.serial}"

    def _create(self, who: str, request_id: str, items: list[tuple[str, int]]) -> Any:
        try:
            order = self.client.create_order(who, request_id, items, timeout=10)
        except grpc.RpcError as error:
            details = error_details(error)
            unknown = details.code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            self.calls[who].append((request_id, "unknown" if unknown else "failed"))
            return details
        self.calls[who].append((request_id, "ok"))
        return order

    @rule(
        who=st.sampled_from(sorted(ACCOUNTS)),
        items=st.lists(
            st.tuples(st.sampled_from(sorted(PRODUCTS)), st.integers(1, 3)),
            min_size=1,
            max_size=3,
            unique_by=lambda i: i[0],
        ),
    )
    def place_order(self, who: str, items: list[tuple[str, int]]) -> None:
        self._place(who, items)

    def _place(self, who: str, items: list[tuple[str, int]]) -> None:
        request_id = self._request_id()
        result = self._create(who, request_id, items)
        if isinstance(result, pb.Order):
            assert result.state in (pb.ORDER_STATE_CONFIRMED, pb.ORDER_STATE_PENDING)
            self.placed[request_id] = (who, items, result.order_id)
        elif result.metadata.get("order_id"):
            assert result.reason in (
                "OUT_OF_STOCK",
                "INSUFFICIENT_FUNDS",
                "PAYMENT_UNAVAILABLE",
                "INVENTORY_UNAVAILABLE",
            ), result
            self.placed[request_id] = (who, items, result.metadata["order_id"])

    @rule(index=st.integers(0, 10_000))
    def repeat_a_request(self, index: int) -> None:
        request_id = self._pick(index)
        if request_id is None:
            return
        who, items, order_id = self.placed[request_id]
        result = self._create(who, request_id, items)
        found = result.order_id if isinstance(result, pb.Order) else result.metadata.get("order_id")
        assert found == order_id, (request_id, result)  # same request id, same order, no new effect

    @rule(index=st.integers(0, 10_000))
    def reuse_a_request_id_with_other_items(self, index: int) -> None:
        request_id = self._pick(index)
        if request_id is None:
            return
        who, items, _ = self.placed[request_id]
        other = [(items[0][0], items[0][1] + 1), *items[1:]]
        result = self._create(who, request_id, other)
        assert not isinstance(result, pb.Order) and result.reason == "REQUEST_ID_REUSED", result
        self.calls[who].pop()  # refused before any effect: not a call on the order

    @rule(index=st.integers(0, 10_000))
    def cancel(self, index: int) -> None:
        request_id = self._pick(index)
        if request_id is None:
            return
        who, _, order_id = self.placed[request_id]
        try:
            self.client.order.CancelOrder(
                rpc.CancelOrderRequest(order_id=order_id), metadata=user(who), timeout=10
            )
        except grpc.RpcError as error:
            assert error_details(error).reason == "ORDER_ALREADY_CONFIRMED", error

    @rule(who=st.sampled_from(["alice", "bob"]))
    def order_while_payment_hangs(self, who: str) -> None:
        self.stack.payment.signal(signal.SIGSTOP)
        try:
            self._place(who, [("SKU-TEA", 1)])
        finally:
            self.stack.payment.signal(signal.SIGCONT)

    @rule()
    def kill_the_order_service(self) -> None:
        SagaModel.kills += 1
        self.stack.order.kill()
        SagaModel.stack.order = restart(self.stack.order)

    @rule()
    def kill_nats(self) -> None:
        assert self.stack.events is not None
        SagaModel.nats_kills += 1
        self.stack.events.restart_nats(kill=True)

    @rule(which=st.sampled_from(["notification", "reporting"]))
    def kill_a_consumer(self, which: str) -> None:
        events = self.stack.events
        assert events is not None
        SagaModel.consumer_kills += 1
        consumer = getattr(events, which)
        consumer.kill()
        setattr(events, which, restart(consumer))

    @invariant()
    def stock_and_money_are_conserved(self) -> None:
        """True at every moment, not only when quiet: every change is one transaction."""
        for sku, (_, initial) in PRODUCTS.items():
            available, held, sold = self.client.stock(sku)
            assert min(available, held, sold) >= 0
            assert available + held + sold == initial, sku
        for who, initial in ACCOUNTS.items():
            available, held = self.client.balance(who)
            captured = 0
            for order in self.client.list_orders(who):
                if order.order_id in self.settled:  # final: its payment no longer changes
                    captured += self.settled[order.order_id]
                    continue
                payment = self.client.payment_of(order.order_id)
                amount = 0
                if payment is not None and payment.state == payment_pb2.PAYMENT_STATE_CAPTURED:
                    amount = payment.amount.amount_minor
                captured += amount
                if order.state != pb.ORDER_STATE_PENDING:
                    self.settled[order.order_id] = amount
            assert available + held + captured == initial, who


@pytest.mark.timeout(900)
def test_the_saga_model(model_stack: tuple[Stack, Client]) -> None:
    stack, client = model_stack
    SagaModel.stack, SagaModel.client = stack, client
    run_state_machine_as_test(SagaModel, settings=PROFILE)
    # The crash is the point of the model: a profile that never drew it proved less.
    assert SagaModel.kills > 0, "no run killed the order service"
    assert SagaModel.nats_kills > 0, "no run killed NATS"
    assert SagaModel.consumer_kills > 0, "no run killed a consumer"
    for who, calls in SagaModel.calls.items():
        if calls:
            assert_calls_resolved(client, who, calls)
    assert_invariants(client, Ledger({s: q for s, (_, q) in PRODUCTS.items()}, dict(ACCOUNTS)))
    report = check_databases(stack.databases)  # `shopmesh check`, on the databases
    assert report.ok and not report.parked, (report.problems, report.parked)
    events = stack.events
    assert events is not None
    in_flight = wait_for_quiet(stack.databases, events.nats.monitor_url, QUIET_SECONDS)
    assert not in_flight, f"events not quiet after {QUIET_SECONDS:g} s: {in_flight}"
    told = check_events(stack.databases, events.maildir)
    assert told.ok, told.problems
    assert told.counts["final orders"] > 0, "no order's events were checked"
    summary: dict[str, int] = {}
    for calls in SagaModel.calls.values():
        for _, kind in calls:
            summary[kind] = summary.get(kind, 0) + 1
    record_fault(
        f"saga model: {PROFILE.max_examples} runs x {PROFILE.stateful_step_count} steps,"
        f" {SagaModel.kills} order kills, {SagaModel.nats_kills} NATS kills,"
        f" {SagaModel.consumer_kills} consumer kills ({told.counts['mail copies']} mail copies)",
        summary,
    )
