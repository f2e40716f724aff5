"""Helpers for tests against the whole system (Consul, control plane, services, Envoy):
starting one on free ports, calling it, traffic under faults, settling the invariants."""

from __future__ import annotations

import contextlib
import json
import pathlib
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from gateway.envoy_config import UNTHROTTLED
from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as orders
from shop.order.v1.order_service_pb2_grpc import OrderServiceStub
from shopmesh import check
from shopmesh.check import Location, Report, check_databases
from shopmesh.postgres import ServiceDatabase
from shopmesh.seed import write_seed
from shopmesh.system import Ports, Settings, System
from shopmesh.system import start as start_system
from shopmesh.tools import REPO
from tests.helpers import (
    Client,
    Ledger,
    assert_calls_resolved,
    assert_invariants,
    record_fault,
    run_command,
)
from tests.stack import DatabaseFactory, Stack

# Products and accounts large enough for steady traffic.
PRODUCTS = {"SKU-TEA": (450, 100_000), "SKU-MUG": (1299, 50), "SKU-LAST": (25000, 1)}
ACCOUNTS = {"alice": 100_000, "bob": 2_000, "carol": 0, "rich": 100_000_000}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def text(self) -> str:
        return self.body if isinstance(self.body, str) else json.dumps(self.body)


def rest(
    system: System,
    method: str,
    path: str,
    token: str | None = None,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw_body: bytes | None = None,
) -> Response:
    """One REST call to Envoy's public listener; JSON bodies decoded."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = (
        raw_body
        if raw_body is not None
        else (json.dumps(body).encode() if body is not None else None)
    )
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(
        f"http://{system.public_target}{path}", data=data, method=method, headers=sent
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            status, got, payload = answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        status, got, payload = error.code, dict(error.headers), error.read()
    text = payload.decode(errors="replace")
    try:
        decoded: Any = json.loads(text)
    except ValueError:
        decoded = text
    return Response(status, {k.lower(): v for k, v in got.items()}, decoded)


def direct_client(system: System) -> Client:
    """Stubs straight to the first instance of each service (they share their databases),
    for reading state and invariants without the gateway."""
    return Client(Stack(system.inventory[0], system.payment[0], system.order[0], system.databases))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# Answers after which the caller cannot know whether the order was placed.
UNKNOWN_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


class Gateway(Protocol):
    """Where Envoy's public listener is and how to get a token it accepts: a System, or a
    `shopmesh run` started as a command."""

    @property
    def public_target(self) -> str: ...

    def token(self, user: str) -> str: ...


@dataclass
class Traffic:
    """Steady CreateOrder calls over gRPC through Envoy, in a thread, counting outcomes.

    Each call is recorded by request id as ok, failed (a definite answer: the order was
    refused or cancelled) or unknown (no answer the caller can rely on)."""

    system: Gateway
    user: str = "rich"
    sku: str = "SKU-TEA"
    interval: float = 0.02
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def _run(self) -> None:
        token = self.system.token(self.user)
        with grpc.insecure_channel(self.system.public_target) as channel:
            stub = OrderServiceStub(channel)
            n = 0
            while not self._stop.is_set():
                n += 1
                request = orders.CreateOrderRequest(
                    request_id=f"traffic-{id(self)}-{time.time_ns()}-{n}",
                    line_items=[order_pb2.LineItem(sku=self.sku, quantity=1)],
                )
                try:
                    response = stub.CreateOrder(request, metadata=bearer(token), timeout=15)
                    self.outcomes[order_pb2.OrderState.Name(response.order.state)] += 1
                    self.calls.append((request.request_id, "ok"))
                except grpc.RpcError as error:
                    self.outcomes[error.code().name] += 1
                    self.failures.append(f"{error.code().name}: {error.details()}")
                    unknown = error.code() in UNKNOWN_CODES
                    self.calls.append((request.request_id, "unknown" if unknown else "failed"))
                self._stop.wait(self.interval)

    def summary(self) -> dict[str, int]:
        return {
            kind: sum(1 for _, k in self.calls if k == kind) for kind in ("ok", "failed", "unknown")
        }

    def wait_for_ok(self, count: int, timeout: float = 30) -> None:
        """Blocks until `count` more calls have succeeded."""
        target = self.summary()["ok"] + count
        deadline = time.monotonic() + timeout
        while self.summary()["ok"] < target:
            assert time.monotonic() < deadline, f"traffic does not succeed: {self.summary()}"
            time.sleep(0.02)

    def wait_for(self, count: int, timeout: float = 30) -> None:
        """Blocks until `count` more calls have finished."""
        target = sum(self.outcomes.values()) + count
        deadline = time.monotonic() + timeout
        while sum(self.outcomes.values()) < target:
            assert time.monotonic() < deadline, f"traffic stalled: {self.outcomes}"
            time.sleep(0.02)


def settle(
    client: Client,
    ledger: Ledger,
    traffic: Traffic,
    fault: str,
    databases: Mapping[str, Location],
) -> None:
    """Once quiet: every call of `traffic` resolved, the invariants hold against `ledger`
    through the APIs and in the services' `databases` (`shopmesh check`), and no saga
    was parked (none of these faults makes success impossible); the outcome goes in the
    fault table. Closes `client`."""
    try:
        assert_calls_resolved(client, traffic.user, traffic.calls)
        assert_invariants(client, ledger)
        report = check_databases(databases)
        assert report.ok, report.problems
        assert not report.parked, report.parked
    except AssertionError:
        record_fault(fault, traffic.summary(), "VIOLATED")
        raise
    finally:
        client.close()
    record_fault(fault, traffic.summary())


def write_system_seed(path: pathlib.Path) -> pathlib.Path:
    return write_seed(path, PRODUCTS, ACCOUNTS)


def start_test_system(
    workdir: pathlib.Path, databases: DatabaseFactory | None = None, **settings: Any
) -> System:
    """The whole system (Consul, control plane, the services, Envoy) in `workdir` on free
    ports, seeded with PRODUCTS and ACCOUNTS (Settings fields as keyword arguments), on
    databases from `databases` (by default SQLite files in `workdir`). Its gateway has no
    rate limit in the way (UNTHROTTLED) unless `envoy_limits` is given: most system tests
    send many calls per user, and are about something else."""
    seed = write_system_seed(workdir / "seed.json")
    settings.setdefault("envoy_limits", UNTHROTTLED)
    if databases is not None:
        on_server = {
            name: at for name, at in databases(workdir).items() if isinstance(at, ServiceDatabase)
        }
        settings["databases"] = {**on_server, **settings.get("databases", {})}
    return start_system(Settings(workdir=workdir, ports=Ports.free(), seed_file=seed, **settings))


SystemFactory = Callable[..., System]


@contextlib.contextmanager
def system_factory(
    workdir: pathlib.Path, databases: DatabaseFactory | None = None
) -> Iterator[SystemFactory]:
    """Yields a factory that starts a whole system per call (as start_test_system, each in
    a folder of its own under `workdir`, on databases from `databases`); stops every one,
    by PID, on exit."""
    started: list[System] = []

    def make(**settings: Any) -> System:
        folder = workdir / f"system{len(started)}"
        folder.mkdir()
        started.append(start_test_system(folder, databases, **settings))
        return started[-1]

    try:
        yield make
    finally:
        for system in started:
            system.stop()


TYPESCRIPT_CLIENT = REPO / "clients" / "typescript"


def build_typescript_client() -> pathlib.Path:
    """Compiles clients/typescript (tsc, from its npm ci'd node_modules); returns its folder."""
    assert (TYPESCRIPT_CLIENT / "node_modules").is_dir(), "run `make setup` (npm ci) first"
    run_command(
        [TYPESCRIPT_CLIENT / "node_modules" / ".bin" / "tsc", "-p", "."],
        cwd=TYPESCRIPT_CLIENT,
        timeout=120,
    )
    return TYPESCRIPT_CLIENT


def settle_events(system: System, fault: str, traffic: Traffic, timeout: float = 30) -> Report:
    """Waits (bounded) until the events are quiet, then asserts the events' invariants
    (shopmesh.check.check_events: outboxes sent, one notification record and at least one
    message per final order, the read model's totals); returns the report (its counts
    say how many mail copies there were)."""
    in_flight = check.wait_for_quiet(system.databases, system.nats.monitor_url, timeout)
    if in_flight:
        record_fault(fault, traffic.summary(), "VIOLATED")
        raise AssertionError(f"events not quiet after {timeout} s: {in_flight}")
    report = check.check_events(system.databases, system.maildir)
    if not report.ok:
        record_fault(fault, traffic.summary(), "VIOLATED")
    assert report.ok, report.problems
    return report
