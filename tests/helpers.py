"""What the tests share: seed data, in-process servers, clients, waiting, invariants,
running a command."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import pathlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from services.common import tls
from services.common.identity import ADMIN_SCOPE, SCOPES_HEADER, USER_HEADER
from services.common.server import Service, build_server, set_serving
from services.common.status import ErrorDetails, error_details
from shop.inventory.v1 import inventory_service_pb2 as inv
from shop.inventory.v1 import inventory_service_pb2_grpc
from shop.order.v1 import order_pb2, order_service_pb2_grpc
from shop.order.v1 import order_service_pb2 as orders
from shop.payment.v1 import payment_pb2, payment_service_pb2_grpc
from shop.payment.v1 import payment_service_pb2 as pay
from shopmesh.tools import REPO

T = TypeVar("T")

WAIT_SECONDS = 30.0

# The seed of the in-process services and of the process stacks: price and stock per SKU,
# balance per user.
PRODUCTS = {
    "SKU-TEA": (450, 100),
    "SKU-MUG": (1299, 25),
    "SKU-LAST": (25000, 1),
    "SKU-NONE": (100, 0),
}
ACCOUNTS = {"alice": 100_000, "bob": 2_000, "carol": 0, "rich": 10_000_000}


def user(user_id: str) -> tuple[tuple[str, str], ...]:
    """Metadata of a call made by `user_id`, as the gateway would set it."""
    return ((USER_HEADER, user_id),)


ADMIN = ((USER_HEADER, "ops"), (SCOPES_HEADER, f"openid {ADMIN_SCOPE}"))


@dataclass
class Served:
    channel: grpc.aio.Channel
    target: str


@contextlib.asynccontextmanager
async def serving(service: Service) -> AsyncIterator[Served]:
    """Serves `service` in this process on a free port; yields a channel to it."""
    server, port, health = await build_server(service)
    await server.start()
    await service.start()
    await set_serving(health, service)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(channel, f"127.0.0.1:{port}")
    finally:
        await channel.close()
        await server.stop(None)
        await service.stop()


async def rejected(call: Any) -> ErrorDetails:
    """The error an awaited call fails with; fails the test if it succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error_details(error)
    raise AssertionError("the call succeeded but an error was expected")


def fails(call: Callable[[], Any]) -> ErrorDetails:
    """The error a blocking call fails with; fails the test if it succeeds."""
    try:
        call()
    except grpc.RpcError as error:
        return error_details(error)
    raise AssertionError("the call succeeded but an error was expected")


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = WAIT_SECONDS) -> T:
    """Polls `condition` until it returns something truthy; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def eventually(
    condition: Callable[[], Any],
    what: str,
) -> Any:
    """Polls `condition` (on this event loop, so the calls under test go on; it may be a
    coroutine function) until it returns something truthy; fails after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_SECONDS}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class TLSDial:
    """How a test client dials a mutual-TLS port: trusting `trust`'s CA, presenting the
    certificate in `mine` (None: none), accepting only a server whose certificate names
    `peer` (its DNS SAN: grpcio's Python channels check no URI SAN)."""

    mine: pathlib.Path | None
    trust: pathlib.Path
    peer: str

    def credentials(self) -> grpc.ChannelCredentials:
        root = (self.trust / "ca.pem").read_bytes()
        if self.mine is None:
            return grpc.ssl_channel_credentials(root)
        files = tls.CertificateFiles(self.mine).read()
        return grpc.ssl_channel_credentials(root, files.key, files.chain)

    @property
    def options(self) -> tuple[tuple[str, str], ...]:
        return (("grpc.ssl_target_name_override", tls.dns_name(self.peer)),)

    def channel(self, target: str) -> grpc.Channel:
        return grpc.secure_channel(target, self.credentials(), options=self.options)

    def aio_channel(self, target: str) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(target, self.credentials(), options=self.options)


class Reachable(Protocol):
    @property
    def target(self) -> str: ...


class Targets(Protocol):
    """Where each service answers: a Stack, or a system's first instances."""

    @property
    def order(self) -> Reachable: ...
    @property
    def inventory(self) -> Reachable: ...
    @property
    def payment(self) -> Reachable: ...


class Client:
    """Blocking stubs for a running stack (subprocesses), as a user or operator calls it."""

    def __init__(self, stack: Targets) -> None:
        self._channels = [
            grpc.insecure_channel(s.target) for s in (stack.order, stack.inventory, stack.payment)
        ]
        self.order = order_service_pb2_grpc.OrderServiceStub(self._channels[0])
        self.inventory = inventory_service_pb2_grpc.InventoryServiceStub(self._channels[1])
        self.payment = payment_service_pb2_grpc.PaymentServiceStub(self._channels[2])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def create_order(
        self, user_id: str, request_id: str, items: Iterable[tuple[str, int]], timeout: float = 20
    ) -> order_pb2.Order:
        request = orders.CreateOrderRequest(
            request_id=request_id,
            line_items=[order_pb2.LineItem(sku=s, quantity=q) for s, q in items],
        )
        response: orders.CreateOrderResponse = self.order.CreateOrder(
            request, metadata=user(user_id), timeout=timeout
        )
        return response.order

    def get_order(self, user_id: str, order_id: str) -> order_pb2.Order:
        request = orders.GetOrderRequest(order_id=order_id)
        response: orders.GetOrderResponse = self.order.GetOrder(
            request, metadata=user(user_id), timeout=5
        )
        return response.order

    def list_orders(self, user_id: str) -> list[order_pb2.Order]:
        found, token = [], ""
        while True:
            page = self.order.ListOrders(
                orders.ListOrdersRequest(page_size=100, page_token=token),
                metadata=user(user_id),
                timeout=5,
            )
            found.extend(page.orders)
            token = page.next_page_token
            if not token:
                return found

    def wait_final(self, user_id: str, order_id: str) -> order_pb2.Order:
        def final() -> order_pb2.Order | None:
            order = self.get_order(user_id, order_id)
            return order if order.state != order_pb2.ORDER_STATE_PENDING else None

        return wait_for(final, f"order {order_id} to be final")

    def stock(self, sku: str) -> tuple[int, int, int]:
        """(available, held, sold) of a product."""
        p = self.inventory.GetProduct(inv.GetProductRequest(sku=sku), timeout=5).product
        return p.available_quantity, p.held_quantity, p.sold_quantity

    def balance(self, user_id: str) -> tuple[int, int]:
        """(available, held) of a user's account."""
        account = self.payment.GetAccount(
            pay.GetAccountRequest(user_id=user_id), metadata=ADMIN, timeout=5
        ).account
        return account.available_balance.amount_minor, account.held_balance.amount_minor

    def payment_of(self, order_id: str) -> payment_pb2.Payment | None:
        try:
            response: pay.GetPaymentResponse = self.payment.GetPayment(
                pay.GetPaymentRequest(order_id=order_id), metadata=ADMIN, timeout=5
            )
            return response.payment
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


@dataclass(frozen=True)
class Ledger:
    """What the stack started with: stock per SKU and balance per user."""

    stock: dict[str, int]
    balances: dict[str, int]


def assert_invariants(client: Client, ledger: Ledger) -> None:
    """The saga's invariants, read through the services' APIs once the system is quiet.

    Every order is final; per SKU, initial stock = available + sold with nothing held and
    sold = what confirmed orders bought; per order, a CONFIRMED one has exactly one captured
    payment of its total (none if the total is 0: a free order makes no payment call), a
    CANCELLED one none (its payment, if any, held nothing or gave it back: VOIDED, DECLINED,
    EXPIRED, or pruned); per user, initial balance = available + captured, with nothing held.
    """
    sold_by_orders = dict.fromkeys(ledger.stock, 0)
    for user_id, initial in ledger.balances.items():
        captured = 0
        for order in client.list_orders(user_id):
            assert order.state in (
                order_pb2.ORDER_STATE_CONFIRMED,
                order_pb2.ORDER_STATE_CANCELLED,
            ), f"order {order.order_id} is not final: {order}"
            payment = client.payment_of(order.order_id)
            if order.state == order_pb2.ORDER_STATE_CONFIRMED:
                if order.total.amount_minor == 0:
                    assert payment is None, f"free order {order.order_id} has payment {payment}"
                else:
                    assert payment is not None
                    assert payment.state == payment_pb2.PAYMENT_STATE_CAPTURED
                    assert payment.amount.amount_minor == order.total.amount_minor
                    captured += payment.amount.amount_minor
                for item in order.line_items:
                    sold_by_orders[item.sku] += item.quantity
            else:
                assert order.cancel_reason, f"cancelled order {order.order_id} has no reason"
                assert payment is None or payment.state in (
                    payment_pb2.PAYMENT_STATE_VOIDED,
                    payment_pb2.PAYMENT_STATE_DECLINED,
                    payment_pb2.PAYMENT_STATE_EXPIRED,
                ), f"cancelled order {order.order_id} has payment {payment}"
        available, held = client.balance(user_id)
        assert held == 0, f"{user_id} still has {held} held"
        assert available + captured == initial, f"{user_id}: {available} + {captured} != {initial}"
    for sku, initial in ledger.stock.items():
        available, held, sold = client.stock(sku)
        assert held == 0, f"{sku} still has {held} held"
        assert available >= 0
        assert available + sold == initial, f"{sku}: {available} + {sold} != {initial}"
        assert sold == sold_by_orders[sku], (
            f"{sku}: sold {sold}, confirmed orders {sold_by_orders[sku]}"
        )


def assert_calls_resolved(client: Client, user_id: str, calls: list[tuple[str, str]]) -> None:
    """After a fault, once the system is quiet: every order of the user is final (so every
    unknown call ended in a final state or in no order at all), each request id placed at
    most one order, every ok call's order exists, and no refused call's order was
    confirmed (the caller told "no" must not have paid)."""

    def all_final() -> list[order_pb2.Order] | None:
        found = client.list_orders(user_id)
        pending = [o for o in found if o.state == order_pb2.ORDER_STATE_PENDING]
        return found if found and not pending else None

    orders = wait_for(all_final, "every order to be final")
    per_request = Counter(o.request_id for o in orders)
    assert max(per_request.values()) == 1, [r for r, n in per_request.items() if n > 1]
    placed = {o.request_id: o.state for o in orders}
    outcomes: dict[str, set[str]] = {}
    for request_id, outcome in calls:
        outcomes.setdefault(request_id, set()).add(outcome)
        if outcome == "ok":
            assert request_id in placed, f"ok call {request_id} has no order"
    for request_id, seen in outcomes.items():
        # Only ids every call of which was refused: a reused id may have placed an order
        # with an earlier call before a later one was refused (REQUEST_ID_REUSED).
        if seen == {"failed"}:
            assert placed.get(request_id) != order_pb2.ORDER_STATE_CONFIRMED, (
                f"refused call {request_id} has a confirmed order"
            )


@dataclass(frozen=True)
class FaultResult:
    fault: str
    ok: int
    failed: int
    unknown: int
    invariants: str


def stop_on_sigterm() -> None:
    """Makes SIGTERM stop a test run as Ctrl-C does. `timeout` (make test, make chaos) and
    CI stop pytest with SIGTERM, which ends Python at once, so no fixture tore down and the
    systems the tests had started (Consul, Envoy, services) ran on after the run; as a
    KeyboardInterrupt, pytest stops and runs every finalizer."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


FAULT_TABLE: list[FaultResult] = []
"""Filled by the fault tests, printed as a table at the end of the run (conftest)."""


def record_fault(fault: str, summary: dict[str, int], invariants: str = "held") -> None:
    FAULT_TABLE.append(
        FaultResult(
            fault,
            summary.get("ok", 0),
            summary.get("failed", 0),
            summary.get("unknown", 0),
            invariants,
        )
    )


COMMAND_TIMEOUT_SECONDS = 60.0
SHOWN_OUTPUT_CHARS = 4000


def run_command(
    command: Sequence[str | os.PathLike[str]],
    *,
    expect: int | None = 0,
    timeout: float = COMMAND_TIMEOUT_SECONDS,
    cwd: pathlib.Path = REPO,
    env: Mapping[str, str] | None = None,
    stdin: str | bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs `command` from `cwd` to its end, its output captured as text (bytes that are
    not UTF-8 replaced). Fails the test, with the command and the end of what it printed,
    if it is not done within `timeout` or exits with another code than `expect` (None:
    any code, for a test that reads it). `env`, if given, is the whole environment."""
    argv = [os.fspath(part) for part in command]
    sent = stdin.encode() if isinstance(stdin, str) else stdin
    try:
        ran = subprocess.run(
            argv, cwd=cwd, env=env, input=sent, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as late:
        printed = _printed(_text(late.stdout), _text(late.stderr))
        raise AssertionError(f"{argv} was not done after {timeout:g} s{printed}") from None
    done = subprocess.CompletedProcess(argv, ran.returncode, _text(ran.stdout), _text(ran.stderr))
    if expect is not None and done.returncode != expect:
        printed = _printed(done.stdout, done.stderr)
        raise AssertionError(f"{argv} exited with {done.returncode}, not {expect}{printed}")
    return done


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _printed(stdout: str, stderr: str) -> str:
    return (
        f"\n--- stdout (its end):\n{stdout[-SHOWN_OUTPUT_CHARS:]}"
        f"\n--- stderr (its end):\n{stderr[-SHOWN_OUTPUT_CHARS:]}"
    )
