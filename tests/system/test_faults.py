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
from services.common.relay import CRASH_EXIT_CODE
from shop.inventory.v1 import inventory_pb2
from shop.inventory.v1 import inventory_service_pb2 as inv
from shop.inventory.v1.inventory_service_pb2_grpc import InventoryServiceStub
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
    direct_client,
    settle_events,
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


@pytest.mark.alone("a failure rate under 1% under flapping")
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


@pytest.mark.alone("latency against a slow instance")
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


@pytest.mark.alone("retries counted against Envoy's budget in time")
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


def test_nats_killed_and_restarted_under_traffic(make_system: SystemFactory) -> None:
    """NATS killed (kill -9) under order load, then started again on its store: orders go
    on meanwhile (the events wait in the outboxes), the relays publish them once it is back,
    the consumers catch up, and each final order is told exactly once and counted once in
    the read model."""
    system = make_system()
    with Traffic(system) as traffic:
        traffic.wait_for(10)
        system.nats.kill()
        traffic.wait_for_ok(10)  # orders do not need NATS
        system.nats.start()
        system.nats.wait_until(system.nats.is_ready, "NATS back")
        traffic.wait_for_ok(10)
    fault = "NATS killed (kill -9) and restarted under traffic"
    report = settle_events(system, fault, traffic)
    assert report.counts["final orders"] >= 30, report.counts
    settle(system, traffic, f"{fault}: {report.counts['mail copies']} mail copies")


def test_nats_down_when_the_services_start(make_system: SystemFactory) -> None:
    """Every service (the producers, notification and reporting) started again while NATS
    is down: they start and serve, orders go through with their events held in the
    outboxes, and once NATS starts the relays publish them and the consumers catch up."""
    system = make_system()
    system.nats.stop()
    for group in (system.inventory, system.payment, system.order, system.notification):
        for n, instance in enumerate(group):
            instance.stop()
            group[n] = restart(instance)
    reporting = system.reporting[0]
    reporting.stop()
    system.reporting[0] = restart(reporting)
    system.envoy.wait_until(system.envoy_ready, "Envoy to see every instance again")
    with Traffic(system) as traffic:
        traffic.wait_for_ok(10)
        system.nats.start()
        system.nats.wait_until(system.nats.is_ready, "NATS up")
        traffic.wait_for_ok(10)
    fault = "NATS down when the services start, started later"
    report = settle_events(system, fault, traffic)
    assert report.counts["final orders"] >= 20, report.counts
    settle(system, traffic, f"{fault}: {report.counts['mail copies']} mail copies")


@pytest.mark.parametrize("service", ["order", "inventory", "payment"])
def test_a_relay_killed_between_the_puback_and_the_mark(
    make_system: SystemFactory, service: str
) -> None:
    """The producing service's process exits right after its relay's 30th publish was
    acknowledged and before the mark (the TEST ONLY `outbox_exit_after_publishes`, as a
    kill -9 there would); started again, it publishes that event again (same id): NATS drops
    it by Nats-Msg-Id, the consumers dedup, and nothing is told or counted twice."""
    system = make_system(service_settings={service: {"outbox_exit_after_publishes": "30"}})
    group = getattr(system, service)
    with Traffic(system) as traffic:
        wait_for(lambda: not group[0].running(), f"{service} to exit between ack and mark")
        assert group[0].process.poll() == CRASH_EXIT_CODE, group[0].exit_status()
        group[0] = restart(group[0], outbox_exit_after_publishes="")
        system.envoy.wait_until(system.envoy_ready, f"Envoy to see {service} again")
        traffic.wait_for_ok(10)
    fault = f"{service}'s relay killed between the PubAck and the mark"
    report = settle_events(system, fault, traffic)
    assert report.counts["final orders"] >= 10, report.counts
    settle(system, traffic, f"{fault}: {report.counts['mail copies']} mail copies")


FAST_REDELIVERY = {
    "notification": {"consumer_ack_wait_seconds": "2"},
    "reporting": {"consumer_ack_wait_seconds": "2"},
}
"""Consumers whose unacked messages come again after 2 s (30 s by default), so that a
row with a consumer killed stays short."""


def test_consumers_killed_mid_batch_under_traffic(make_system: SystemFactory) -> None:
    """The notification and the reporting service killed (kill -9) while events flow, then
    started again: what they had fetched and not acked is delivered again (after the ack
    wait), their dedup keeps it from counting twice; copies of a mail (same Message-ID) are
    counted."""
    system = make_system(service_settings=FAST_REDELIVERY)
    with Traffic(system) as traffic:
        traffic.wait_for_ok(15)
        for group in (system.notification, system.reporting):
            group[0].kill()
        traffic.wait_for_ok(10)  # orders go on; their events wait in the stream
        for group in (system.notification, system.reporting):
            group[0] = restart(group[0])
        traffic.wait_for_ok(10)
    fault = "notification and reporting killed (kill -9) mid-batch, restarted"
    report = settle_events(system, fault, traffic)
    assert report.counts["final orders"] >= 35, report.counts
    settle(system, traffic, f"{fault}: {report.counts['mail copies']} mail copies")


def test_a_poison_message_on_an_order_subject_under_traffic(make_system: SystemFactory) -> None:
    """Garbage published on shop.order.v1.OrderConfirmed under load: both consumers park it
    (terminated; the read model counts it in projection_state, the notification consumer
    in its in-memory counts, not asserted here) and the events behind it keep flowing."""
    system = make_system()
    with Traffic(system) as traffic:
        traffic.wait_for_ok(10)
        publish_raw(system, "shop.order.v1.OrderConfirmed", b"\xffnot an envelope")
        traffic.wait_for_ok(10)
    fault = "poison message on shop.order.v1.OrderConfirmed under traffic"
    report = settle_events(system, fault, traffic)
    assert report.counts["final orders"] >= 20, report.counts
    [state] = read_rows(system.databases["reporting"], "SELECT parked FROM projection_state")
    assert state["parked"] == 1, state
    settle(system, traffic, f"{fault}: parked, reporting counted 1")


def publish_raw(system: System, subject: str, data: bytes) -> None:
    async def run() -> None:
        publisher = await open_publisher(JetStreamSettings(url=system.nats.url))
        try:
            assert await publisher.connection.wait_ready(10)
            await publisher.publish(subject, f"poison-{time.time_ns()}", data)
        finally:
            await publisher.close()

    asyncio.run(run())
