"""Faults under load against the whole system (Consul, control plane, services, Envoy):
lost replies, Envoy killed, a flapping instance, a locked database. Each test records
every call as ok / failed / unknown and ends with the invariants and the check that every
unknown call ended in exactly one final state (or none); after each, every order's event
log is replayed to its row (`new_databases` below)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest

from gateway.envoy_config import UNTHROTTLED
from services.common.jetstream import JetStreamSettings, open_publisher
from shop.inventory.v1 import inventory_pb2
from shop.inventory.v1 import inventory_service_pb2 as inv
from shop.inventory.v1.inventory_service_pb2_grpc import InventoryServiceStub
from shopmesh.processes import ServiceProcess
from shopmesh.system import System
from tests.helpers import (
    Ledger,
    assert_calls_resolved,
    assert_invariants,
    fails,
    record_fault,
    user,
    wait_for,
)
from tests.stack import DatabaseFactory, logs_checked, read_rows, restart
from tests.system_helpers import (
    ACCOUNTS,
    PRODUCTS,
    SystemFactory,
    Traffic,
    assert_events_delivered,
    direct_client,
    pending_events,
)
from tests.system_helpers import settle as settle_traffic

FLAP_SECONDS = 40 if os.environ.get("SHOPMESH_CHAOS") == "1" else 12
LEDGER = Ledger({s: q for s, (_, q) in PRODUCTS.items()}, dict(ACCOUNTS))


@pytest.fixture
def new_databases(new_databases: DatabaseFactory) -> Iterator[DatabaseFactory]:
    """The session's databases, with every order's event log replayed to its row after
    the test (tests.stack.logs_checked)."""
    with logs_checked(new_databases) as databases:
        yield databases


def settle(system: System, traffic: Traffic, fault: str) -> None:
    """Invariants and unknown-call resolution once quiet; the outcome goes in the table."""
    settle_traffic(direct_client(system), LEDGER, traffic, fault, system.databases)


@pytest.mark.parametrize("method", ["AuthorizePayment", "CapturePayment", "VoidPayment"])
def test_lost_replies_after_payment_committed(make_system: SystemFactory, method: str) -> None:
    """Payment commits, then its reply is lost (twice, as UNAVAILABLE): Envoy's internal
    hop retries it (the saga would, past Envoy's budget), the participant answers from its
    record, and nothing is held or taken twice."""
    system = make_system(service_settings={"payment": {"lose_replies": f"{method}:2"}})
    # A void happens when an order is cancelled: bob cannot pay for the 250.00 item.
    buyer, sku = ("bob", "SKU-LAST") if method == "VoidPayment" else ("rich", "SKU-MUG")
    with Traffic(system, user=buyer, sku=sku) as traffic:
        traffic.wait_for(3)
    settle(system, traffic, f"{method} reply lost twice after commit")
    # The replies really were lost, and resent: Envoy counted the retries.
    retries = system.stats("cluster.payment.upstream_rq_retry")
    assert retries.get("cluster.payment.upstream_rq_retry", 0) >= 2, retries
    summary = traffic.summary()
    assert summary["unknown"] == 0  # the lost replies were absorbed
    assert summary["failed" if method == "VoidPayment" else "ok"] >= 3, traffic.failures


def test_envoy_killed_and_restarted_under_traffic(make_system: SystemFactory) -> None:
    system = make_system()
    with Traffic(system) as traffic:
        traffic.wait_for(10)
        system.envoy.kill()
        # The outage itself: wait until callers see it (calls fail while nothing listens).
        wait_for(lambda: traffic.summary()["unknown"] > 0, "callers to see Envoy gone")
        system.envoy.start()
        system.envoy.wait_until(system.envoy_ready, "Envoy to have endpoints again")
        traffic.wait_for_ok(20)  # clients reconnect (after gRPC's own backoff) and succeed
    settle(system, traffic, "Envoy killed (kill -9) and restarted under traffic")


def test_nats_killed_and_restarted_under_traffic(make_system: SystemFactory) -> None:
    """NATS killed (kill -9) under order load and started again on its store: the
    services keep taking orders meanwhile (the outboxes grow), then every event is
    published, each final order told once, and the read model's totals are the orders'."""
    system = make_system()
    with Traffic(system) as traffic:
        traffic.wait_for(10)
        system.nats.kill()
        traffic.wait_for_ok(10)  # orders go on without NATS, their events waiting
        assert pending_events(system.databases) > 0
        system.nats.start()
        system.nats.wait_until(system.nats.is_ready, "NATS to be back")
        traffic.wait_for_ok(10)
    try:
        assert_events_delivered(system.databases)
    except AssertionError:
        record_fault(
            "NATS killed (kill -9) and restarted under traffic", traffic.summary(), "VIOLATED"
        )
        raise
    settle(system, traffic, "NATS killed (kill -9) and restarted under traffic")


def test_services_started_while_nats_is_down_serve_and_publish_once_it_is_up(
    make_system: SystemFactory,
) -> None:
    """Every service that produces or consumes events is started again while NATS is
    down: each comes up and serves (orders confirm, their events wait in the outboxes),
    and once NATS starts every event is published and consumed."""
    system = make_system()
    system.nats.stop()
    for group in (system.inventory, system.payment, system.order, system.notification):
        for n, instance in enumerate(group):
            instance.stop()
            group[n] = restart(instance)
    system.reporting[:] = [restart(p) for p in stopped(system.reporting)]
    system.envoy.wait_until(system.envoy_ready, "Envoy to see the restarted services")
    with Traffic(system) as traffic:
        traffic.wait_for_ok(10)
        assert pending_events(system.databases) > 0
        system.nats.start()
        system.nats.wait_until(system.nats.is_ready, "NATS to start")
        traffic.wait_for_ok(10)
    fault = "NATS down while the services start, then started"
    try:
        assert_events_delivered(system.databases)
    except AssertionError:
        record_fault(fault, traffic.summary(), "VIOLATED")
        raise
    settle(system, traffic, fault)


@pytest.mark.parametrize("producer", ["order", "inventory", "payment"])
def test_a_relay_killed_between_the_ack_and_the_mark_publishes_nothing_twice(
    make_system: SystemFactory, producer: str
) -> None:
    """The producer's process ends right after NATS acknowledged its first events and
    before its relay marked them sent (a TEST ONLY setting, as a kill -9 there would):
    started again, it publishes them again under the same ids, and the duplicates window
    (or the consumers' dedup) drops them: nothing is told or counted twice."""
    system = make_system(service_settings={producer: {"outbox_exit_after_publishes": "3"}})
    victim = getattr(system, producer)[0]
    with Traffic(system) as traffic:
        wait_for(lambda: not victim.running(), f"{producer} to exit between ack and mark")
        getattr(system, producer)[0] = restart(victim, outbox_exit_after_publishes="")
        traffic.wait_for_ok(10)
    fault = f"{producer}'s relay killed between the PubAck and the mark"
    try:
        assert "TEST ONLY: exiting after" in victim.log_path.read_text(errors="replace")
        assert_events_delivered(system.databases)
    except AssertionError:
        record_fault(fault, traffic.summary(), "VIOLATED")
        raise
    settle(system, traffic, fault)


def stopped(processes: list[ServiceProcess]) -> list[ServiceProcess]:
    for process in processes:
        process.stop()
    return processes


def publish_raw(system: System, subject: str, msg_id: str, data: bytes) -> None:
    """One message on `subject` of the system's stream, as a broken producer would send."""

    async def publish() -> None:
        publisher = await open_publisher(JetStreamSettings(url=system.nats.url))
        try:
            assert await publisher.connection.wait_ready(10)
            await publisher.publish(subject, msg_id, data)
        finally:
            await publisher.close()

    asyncio.run(publish())


def test_a_poison_message_under_traffic_is_parked_and_the_stream_flows_on(
    make_system: SystemFactory,
) -> None:
    """Garbage on an order event's subject, under load: both consumers park it (counted,
    logged), and every event behind it still reaches them."""
    system = make_system()
    with Traffic(system) as traffic:
        traffic.wait_for(5)
        publish_raw(system, "shop.order.v1.OrderConfirmed", "poison-1", b"\xff not an envelope")
        traffic.wait_for_ok(10)
    try:
        assert_events_delivered(system.databases)
        parked = read_rows(system.databases["reporting"], "SELECT parked FROM projection_state")
        assert parked and int(parked[0][0]) == 1, parked
        log = system.notification[0].log_path
        wait_for(lambda: "parked message" in log.read_text(errors="replace"), "the park logged")
    except AssertionError:
        record_fault("a poison message on an order subject", traffic.summary(), "VIOLATED")
        raise
    settle(system, traffic, "a poison message on an order subject, under traffic")


def test_a_flapping_instance_costs_under_one_percent(make_system: SystemFactory) -> None:
    """One of two inventory instances is stopped and resumed every 2 s under traffic."""
    system = make_system(instances=2)
    victim = system.inventory[1]
    stop = threading.Event()

    def flap() -> None:
        while not stop.is_set():
            victim.signal(signal.SIGSTOP)
            stop.wait(2)
            victim.signal(signal.SIGCONT)
            stop.wait(2)

    flapper = threading.Thread(target=flap, daemon=True)
    with Traffic(system) as traffic:
        flapper.start()
        time.sleep(FLAP_SECONDS)  # flap cycles under steady traffic
        stop.set()
        flapper.join()
        victim.signal(signal.SIGCONT)
    summary = traffic.summary()
    assert summary["ok"] >= 0.99 * sum(summary.values()), (summary, traffic.failures[:5])
    settle(system, traffic, "inventory instance SIGSTOP/SIGCONT every 2 s (1 of 2)")


@pytest.mark.sqlite_only(
    "holds SQLite's file lock past the busy timeout; PostgreSQL's storage faults are faults"
    " of their own (the server killed, the pool exhausted, a statement timeout)"
)
def test_a_locked_database_gives_a_clean_retryable_status(make_system: SystemFactory) -> None:
    system = make_system()
    database = system.settings.workdir / "inventory.db"
    reserve = inv.ReserveStockRequest(
        order_id="locked-1", items=[inventory_pb2.ReservationItem(sku="SKU-MUG", quantity=1)]
    )
    with grpc.insecure_channel(system.inventory[0].target) as channel:
        stub = InventoryServiceStub(channel)
        lock = sqlite3.connect(database, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database past the busy timeout
        try:
            error = fails(lambda: stub.ReserveStock(reserve, metadata=user("alice"), timeout=15))
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
        assert "locked" not in error.message  # no internal detail
        product = stub.GetProduct(inv.GetProductRequest(sku="SKU-MUG"), timeout=5).product
        assert (product.available_quantity, product.held_quantity) == (
            50,
            0,
        )  # nothing half-applied
        held = stub.ReserveStock(reserve, metadata=user("alice"), timeout=15).reservation
        assert held.state == inventory_pb2.RESERVATION_STATE_HELD  # and it recovers
    record_fault("inventory database locked past the busy timeout", {"ok": 1, "failed": 1})


def test_a_slow_payment_instance_is_routed_around(make_system: SystemFactory) -> None:
    """One of two payment instances takes 1.5 s per call, past the internal hop's 0.8 s
    per-try timeout: Envoy retries on the other instance; every order completes once."""
    system = make_system(instances=2)
    slow = system.payment[1]
    slow.stop()
    system.payment[1] = restart(slow, delay_seconds="1.5")
    with Traffic(system) as traffic:
        traffic.wait_for(40, timeout=60)
    summary = traffic.summary()
    assert summary["ok"] >= 0.99 * sum(summary.values()), (summary, traffic.failures[:5])
    # The slow instance really was tried and given up on after the per-try timeout.
    timeouts = system.stats("cluster.payment.upstream_rq_per_try_timeout")
    assert timeouts.get("cluster.payment.upstream_rq_per_try_timeout", 0) > 0, timeouts
    settle(system, traffic, "payment instance slow (1.5 s per call, 1 of 2)")


def test_a_retry_storm_stays_within_the_retry_budget(make_system: SystemFactory) -> None:
    """Eight clients at once while payment fails half its first 120 calls: Envoy never has
    more than max_retries (2) retries outstanding, the saga's own retries absorb the rest,
    and once the fault clears every order completes."""
    system = make_system(
        envoy_limits=replace(UNTHROTTLED, max_retries=2),
        service_settings={
            "payment": {"flaky_calls": "120"},
            "order": {"step_retry_seconds": "30", "max_backoff_seconds": "0.5"},
        },
    )
    storm = [Traffic(system, interval=0.0) for _ in range(8)]
    for traffic in storm:
        traffic.__enter__()
    try:
        wait_for(
            lambda: sum(t.summary()["ok"] for t in storm) >= 80, "the storm to pass", timeout=90
        )
    finally:
        for traffic in storm:
            traffic.__exit__(None, None, None)
    stats = system.stats("cluster.payment.upstream_rq_retry")
    assert stats["cluster.payment.upstream_rq_retry"] > 0
    assert stats["cluster.payment.upstream_rq_retry_overflow"] > 0  # the budget was enforced
    with Traffic(system) as after:
        after.wait_for(10)
    recovered = after.summary()
    assert recovered["ok"] >= 10 and recovered["failed"] == recovered["unknown"] == 0, recovered
    total = {k: sum(t.summary()[k] for t in [*storm, after]) for k in ("ok", "failed", "unknown")}
    client = direct_client(system)
    try:
        assert_calls_resolved(client, "rich", [c for t in [*storm, after] for c in t.calls])
        assert_invariants(client, LEDGER)
    finally:
        client.close()
    record_fault(
        f"retry storm, payment failing 1/2: {stats['cluster.payment.upstream_rq_retry']} retries,"
        f" {stats['cluster.payment.upstream_rq_retry_overflow']} over budget",
        total,
    )
