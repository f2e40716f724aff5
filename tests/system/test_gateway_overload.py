"""The edge under a flood: slow unauthenticated streams, too many connections, header
names the filters would not see. Raw HTTP/2 (h2), since a gRPC client always finishes a
request body: these tests hold streams open with a body that never completes."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from functools import partial

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from gateway.envoy_config import UNTHROTTLED, Limits
from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as rpc
from shop.order.v1.order_service_pb2_grpc import OrderServiceStub
from shopmesh.system import System
from tests.helpers import record_fault, wait_for
from tests.system_helpers import SystemFactory, bearer, rest

pytestmark = pytest.mark.alone("rate limits and refusals are asserted against the clock")

SLOW_STREAMS = 600


class SlowClient:
    """One HTTP/2 connection whose streams send headers and one byte of body, then nothing."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.target = target
        self._read_until(h2.events.RemoteSettingsChanged)

    def _read_until(self, kind: type) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            events = self.conn.receive_data(self.sock.recv(65536))
            self.sock.sendall(self.conn.data_to_send())
            if any(isinstance(e, kind) for e in events):
                return
        raise AssertionError(f"no {kind.__name__} from Envoy")

    @property
    def max_streams(self) -> int:
        return int(self.conn.remote_settings.max_concurrent_streams)

    def open(self, path: str, count: int, token: str | None = None) -> int:
        """Opens up to `count` slow streams (as many as the server allows); how many."""
        opened = 0
        authorization = [("authorization", f"Bearer {token}")] if token else []
        for _ in range(count):
            stream = self.conn.get_next_available_stream_id()
            try:
                self.conn.send_headers(
                    stream,
                    [
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":authority", self.target),
                        (":path", path),
                        ("content-type", "application/grpc"),
                        ("te", "trailers"),
                        *authorization,
                    ],
                )
            except h2.exceptions.TooManyStreamsError:
                break
            self.conn.send_data(stream, b"\x00")  # 1 of a gRPC frame's 5 prefix bytes
            opened += 1
        self.sock.sendall(self.conn.data_to_send())
        return opened

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def slow_clients(system: System) -> Iterator[list[SlowClient]]:
    clients: list[SlowClient] = []
    yield clients
    for client in clients:
        client.close()


def open_slow_streams(
    system: System, clients: list[SlowClient], path: str, token: str | None = None
) -> int:
    """SLOW_STREAMS slow streams to `path`, on as many connections as that takes, in waves
    of 100, each seen by Envoy before the next (held upstream, or refused by a breaker or a
    rate limit), as a patient attacker opens them: all at once, most would only queue."""

    def requests_seen() -> int:
        name = "http.public.downstream_rq_total"
        return system.stats(name).get(name, 0)

    def seen_since(before: int, count: int) -> bool:
        return requests_seen() - before >= count

    opened = 0
    clients.append(SlowClient(system.public_target))
    assert clients[0].max_streams == 100, "Envoy lets one connection hold any number"
    while opened < SLOW_STREAMS:
        before = requests_seen()
        wave = clients[-1].open(path, 100, token)
        if wave == 0:  # this connection holds all it may: another one
            clients.append(SlowClient(system.public_target))
            continue
        opened += wave
        wait_for(partial(seen_since, before, wave), "Envoy to see the slow streams")
    return opened


def assert_an_order_succeeds(system: System, user: str = "alice") -> None:
    with grpc.insecure_channel(system.public_target) as channel:
        response = OrderServiceStub(channel).CreateOrder(
            rpc.CreateOrderRequest(
                request_id=uuid.uuid4().hex,
                line_items=[order_pb2.LineItem(sku="SKU-TEA", quantity=1)],
            ),
            metadata=bearer(system.token(user)),
            timeout=15,
        )
    assert response.order.state == order_pb2.ORDER_STATE_CONFIRMED


def test_slow_health_streams_cannot_stop_an_order(
    system: System, slow_clients: list[SlowClient]
) -> None:
    """600 health streams (no token needed) whose bodies never end used to fill the order
    cluster's 512 requests: every CreateOrder then answered 503 overflow. (This module's
    system has no rate limits in the way, UNTHROTTLED: the health route's own cluster is
    what holds here.)"""
    opened = open_slow_streams(system, slow_clients, "/grpc.health.v1.Health/Check")
    assert_an_order_succeeds(system)
    record_fault(f"{opened} slow health streams on {len(slow_clients)} connections", {"ok": 1})


def test_slow_order_streams_of_one_user_cannot_stop_another_users_order(
    make_system: SystemFactory,
) -> None:
    """One user's 600 CreateOrder streams whose bodies never end: gRPC streams go upstream
    at once, so they used to hold the order cluster's 512 requests and every other
    CreateOrder answered 503 overflow. With the default limits (as `make run` has them)
    all but the user's order burst are refused at once (RESOURCE_EXHAUSTED)."""
    limits = Limits()
    system = make_system(envoy_limits=limits)
    clients: list[SlowClient] = []
    try:
        path = "/shop.order.v1.OrderService/CreateOrder"
        started = time.monotonic()
        opened = open_slow_streams(system, clients, path, system.token("carol"))
        refills = limits.user_orders_per_second * (time.monotonic() - started + 1)
        assert_an_order_succeeds(system)
        name = "user_rate_limit.http_local_rate_limit.rate_limited"
        admitted = opened - system.stats(name)[name]
        assert admitted <= limits.user_order_burst + refills, admitted
    finally:
        for client in clients:
            client.close()
    record_fault(f"{opened} slow CreateOrder streams of one user", {"ok": 1})


def test_header_names_with_underscores_are_refused(system: System) -> None:
    answer = rest(
        system, "GET", "/v1/orders", system.token("alice"), headers={"x_shop_user": "bob"}
    )
    assert answer.status == 400, answer


def test_the_overload_manager_watches_the_heap(system: System) -> None:
    stats = system.stats("overload.")
    assert "overload.envoy.overload_actions.stop_accepting_requests.active" in stats, stats
    assert "overload.envoy.resource_monitors.fixed_heap.pressure" in stats, stats


def test_a_body_that_never_ends_and_one_connection_too_many_are_cut(
    make_system: SystemFactory,
) -> None:
    system = make_system(
        envoy_limits=replace(UNTHROTTLED, edge_max_connections=3, request_timeout_seconds=1)
    )
    slow = SlowClient(system.public_target)
    try:
        assert slow.open("/grpc.health.v1.Health/Check", 1) == 1
        started = time.monotonic()
        slow._read_until(h2.events.StreamEnded)  # Envoy answers it: 408, request timeout
        assert time.monotonic() - started < 4
        extra = [socket.create_connection(("127.0.0.1", system.ports.public)) for _ in range(3)]
        try:
            wait_for(
                lambda: (
                    system.stats("connection_limit.public.limited_connections").get(
                        "connection_limit.public.limited_connections", 0
                    )
                    >= 1
                ),
                "Envoy to refuse the fourth connection",
            )
        finally:
            for sock in extra:
                sock.close()
    finally:
        slow.close()
