"""Saga ownership under faults, against the real system (Consul, Envoy, the services): each
saga is driven by one order instance at a time, however long a participant is away, and an
owner paused past its lease neither calls nor writes for a saga it lost.

Each order instance logs every participant call it makes at DEBUG ("saga <id>: <step>,
lease epoch <n>"); the tests read those lines from every instance's log."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import sqlite3
import threading
import time

import grpc
import psycopg
import pytest

from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as orders
from shop.order.v1.order_service_pb2_grpc import OrderServiceStub
from shopmesh.check import Location, check_databases
from shopmesh.postgres import ServiceDatabase
from shopmesh.processes import ServiceProcess
from shopmesh.system import System
from shopmesh.tools import REPO
from tests.helpers import record_fault, wait_for
from tests.stack import read_rows, restart
from tests.system_helpers import SystemFactory, bearer

CHAOS = bool(os.environ.get("SHOPMESH_CHAOS"))
LEASE_SECONDS = 3.0
# The scenario is a 60 s payment outage; the short profile keeps its shape (many lease
# periods and recovery intervals long) in less time.
OUTAGE_SECONDS = 60.0 if CHAOS else 20.0
ORDER_SETTINGS = {
    "lease_seconds": f"{LEASE_SECONDS:g}",
    "recovery_interval_seconds": "1",
    "call_timeout_seconds": "1",
    "max_backoff_seconds": "0.5",
    "step_retry_seconds": "300",  # sagas wait out the outage before the pivot
    "create_wait_seconds": "1",
    "log_level": "DEBUG",
    "max_open_orders_per_user": "100",  # 50 orders of one user wait for payment at once
}
CALL = re.compile(
    r"^(\S+ \S+) DEBUG order services\.order\.saga: saga (\w+): (\w+), lease epoch (\d+)$"
)


def calls(process: ServiceProcess) -> list[tuple[float, str, str]]:
    """(time, order id, step) of every participant call the instance logged."""
    found = []
    for line in process.log_path.read_text(errors="replace").splitlines():
        match = CALL.match(line)
        if match:
            at = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((at, match[2], match[3]))
    return found


def callers_by_saga(system: System) -> dict[str, list[int]]:
    """For each saga, the instances that called for it, in call order, repeats collapsed:
    [0, 1] means instance 0 called, then instance 1 took over."""
    timeline = sorted(
        (at, order_id, n) for n, p in enumerate(system.order) for at, order_id, _ in calls(p)
    )
    runs: dict[str, list[int]] = {}
    for _, order_id, n in timeline:
        seen = runs.setdefault(order_id, [])
        if not seen or seen[-1] != n:
            seen.append(n)
    return runs


def place(system: System, user: str, count: int, prefix: str) -> list[str]:
    """Places `count` orders for one teapot each, 10 at a time; their ids."""
    token = system.token(user)
    ids: list[str] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        with grpc.insecure_channel(system.public_target) as channel:
            response = OrderServiceStub(channel).CreateOrder(
                orders.CreateOrderRequest(
                    request_id=f"{prefix}-{n}",
                    line_items=[order_pb2.LineItem(sku="SKU-TEA", quantity=1)],
                ),
                metadata=bearer(token),
                timeout=10,
            )
        with lock:
            ids.append(response.order.order_id)

    for start in range(0, count, 10):
        threads = [
            threading.Thread(target=one, args=(n,)) for n in range(start, min(start + 10, count))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(ids) == count
    return ids


def states(system: System, user: str, ids: list[str]) -> dict[str, str]:
    token = system.token(user)
    with grpc.insecure_channel(system.public_target) as channel:
        stub = OrderServiceStub(channel)
        return {
            i: order_pb2.OrderState.Name(
                stub.GetOrder(
                    orders.GetOrderRequest(order_id=i), metadata=bearer(token), timeout=5
                ).order.state
            )
            for i in ids
        }


def all_confirmed(system: System, user: str, ids: list[str]) -> bool:
    return set(states(system, user, ids).values()) == {"ORDER_STATE_CONFIRMED"}


def lease_of(system: System, order_id: str) -> tuple[str, int] | None:
    rows = read_rows(
        system.databases["order"],
        "SELECT owner, epoch FROM saga_leases WHERE order_id = ?",
        (order_id,),
    )
    return (rows[0][0], rows[0][1]) if rows else None


def instance_of(system: System, owner: str) -> int:
    """Which order instance a lease owner ("host:pid") is."""
    pid = int(owner.rpartition(":")[2])
    return next(n for n, p in enumerate(system.order) if p.pid == pid)


def in_a_write(database: Location) -> bool:
    """Whether a transaction is open on `database`: on SQLite, someone holds its write
    lock; on PostgreSQL, a session of its role other than this one is inside one."""
    if isinstance(database, ServiceDatabase):
        password = database.password_file.read_text().strip()
        with psycopg.connect(database.url, password=password, connect_timeout=5) as probe:
            row = probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user"
                " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            ).fetchone()
        return row is not None and row[0] > 0
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=0.2)) as probe:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
    except sqlite3.OperationalError:
        return True
    return False


def pause_outside_a_write(process: ServiceProcess, database: Location) -> None:
    """SIGSTOPs `process` at a moment it is inside no transaction on `database`. A process
    stopped inside a write stalls the others until it runs again (on SQLite every writer
    on the file, docs/saga.md; on PostgreSQL every writer of the rows it has locked): a
    fault of its own, not the one tested here."""
    for _ in range(50):
        process.signal(signal.SIGSTOP)
        if not in_a_write(database):
            return
        process.signal(signal.SIGCONT)  # stopped mid-write: let it finish, try again
    raise AssertionError("could not pause the process outside a write")


def stop_payment(system: System) -> None:
    for p in system.payment:
        p.stop()


def start_payment(system: System) -> None:
    system.payment[:] = [restart(p) for p in system.payment]
    wait_for(system.envoy_ready, "Envoy to see the payment instances again", timeout=60)


def test_three_instances_drive_each_saga_one_at_a_time_through_a_long_outage(
    make_system: SystemFactory,
) -> None:
    """Payment is down while 50 orders wait for it, for many lease periods and recovery
    intervals: every saga's calls come from one instance at a time (no instance adopts a
    saga its live owner drives), and once payment is back, new orders all succeed."""
    system = make_system(instances=3, service_settings={"order": ORDER_SETTINGS})
    stop_payment(system)
    waiting = place(system, "rich", 50, "outage")
    outage_end = time.monotonic() + OUTAGE_SECONDS
    wait_for(lambda: time.monotonic() > outage_end or None, "the outage", OUTAGE_SECONDS + 5)
    assert set(states(system, "rich", waiting).values()) == {"ORDER_STATE_PENDING"}
    start_payment(system)

    after = place(system, "alice", 20, "after")
    wait_for(lambda: all_confirmed(system, "alice", after), "the new orders", timeout=60)
    wait_for(lambda: all_confirmed(system, "rich", waiting), "the waiting orders", timeout=90)

    runs = callers_by_saga(system)
    assert set(waiting) <= set(runs), "every waiting saga called payment"
    interleaved = {i: r for i, r in runs.items() if len(r) != len(set(r))}
    assert not interleaved, f"sagas driven by two instances at once: {interleaved}"
    report = check_databases(system.databases)
    assert report.ok and not report.parked, (report.problems, report.parked)
    handovers = sum(len(r) - 1 for r in runs.values())
    record_fault(
        f"payment down {OUTAGE_SECONDS:g} s, 50 open sagas, 3 order instances"
        f" ({handovers} handovers)",
        {"ok": 70, "failed": 0, "unknown": 0},
    )


def test_an_owner_paused_past_its_lease_neither_calls_nor_writes_for_the_lost_saga(
    make_system: SystemFactory,
) -> None:
    """The owner of a saga waiting for payment is SIGSTOPped past its lease; the other
    instance adopts the saga; the old owner, continued, stops driving it: no participant
    call for it afterwards, and its lease epoch is gone (any write would be refused)."""
    system = make_system(instances=2, service_settings={"order": ORDER_SETTINGS})
    stop_payment(system)
    [order_id] = place(system, "rich", 1, "paused")
    owner, epoch = wait_for(lambda: lease_of(system, order_id), "the saga's lease")
    paused = system.order[instance_of(system, owner)]
    wait_for(
        lambda: sum(1 for _, i, _ in calls(paused) if i == order_id) >= 2 or None,
        "the owner to call payment",
    )
    pause_outside_a_write(paused, system.databases["order"])

    def taken_over() -> tuple[str, int] | None:
        lease = lease_of(system, order_id)
        return lease if lease is not None and lease[0] != owner else None

    try:
        adopted = wait_for(taken_over, "another instance to adopt the saga", LEASE_SECONDS * 5)
    finally:
        paused.signal(signal.SIGCONT)
    continued = time.time()
    assert adopted[1] > epoch
    adopter = system.order[instance_of(system, adopted[0])]
    wait_for(
        lambda: (
            sum(1 for at, i, _ in calls(adopter) if i == order_id and at > continued) >= 5 or None
        ),
        "the adopter to go on calling payment",
    )
    late = [c for c in calls(paused) if c[1] == order_id and c[0] >= continued]
    assert late == [], f"the paused owner called again after it was continued: {late}"
    assert f"saga {order_id}: lease epoch {epoch} lost" in paused.log_path.read_text()

    start_payment(system)
    wait_for(lambda: all_confirmed(system, "rich", [order_id]), "the order", timeout=60)
    report = check_databases(system.databases)
    assert report.ok and not report.parked, (report.problems, report.parked)
    record_fault(
        "order owner SIGSTOPped past its lease, saga adopted", {"ok": 1, "failed": 0, "unknown": 0}
    )


FAKETIME = REPO / ".tools" / "lib" / "libfaketime.so.1"
JUMP_SECONDS = 30.0


@pytest.mark.sqlite_only(
    "on PostgreSQL leases expire by the server's clock, not an instance's: a jumped"
    " instance sees no lease expire early, and there is no handover to observe"
)
def test_a_clock_jump_on_one_instance_hands_each_saga_over_once_and_no_storm_follows(
    make_system: SystemFactory,
) -> None:
    """One of two order instances runs under libfaketime; 20 sagas wait for payment; its
    clock jumps 30 s ahead. It sees the other instance's leases as expired and adopts
    those sagas, each once (a new epoch); the other stops driving them at its next renewal,
    and never takes them back. Shortly after the jump, every saga is driven by one instance
    (before leases, both drove every saga); once payment is back, all are confirmed."""
    assert FAKETIME.exists(), "run `make test` (it installs libfaketime into .tools/)"
    system = make_system(instances=2, service_settings={"order": ORDER_SETTINGS})
    clock = system.settings.workdir / "faketime"
    clock.write_text("+0\n")
    jumped = system.order[1]
    jumped.stop()
    # Re-read the offset at most once a second (not on every clock read).
    jumped.env = {
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_CACHE_DURATION": "1",
    }
    jumped.start().wait_ready()
    wait_for(system.envoy_ready, "Envoy to see the restarted order instance", timeout=60)
    stop_payment(system)
    waiting = place(system, "rich", 20, "jump")

    clock.write_text(f"+{JUMP_SECONDS:g}\n")
    wait_for(
        lambda: (
            all(
                (lease := lease_of(system, i)) and instance_of(system, lease[0]) == 1
                for i in waiting
            )
            or None
        ),
        "the jumped instance to hold every lease",
        timeout=30,
    )
    # The other instance finds out at its next renewal (a third of a lease): well within
    # two leases. Observe a few seconds after that, in each instance's own clock.
    settled = time.time() + 2 * LEASE_SECONDS
    wait_for(lambda: time.time() > settled + 3 or None, "calls after the handover", 30)
    window = (settled, settled + 3)
    after: dict[str, set[int]] = {}
    for n, offset in ((0, 0.0), (1, JUMP_SECONDS)):
        for at, order_id, _ in calls(system.order[n]):
            if window[0] <= at - offset <= window[1]:
                after.setdefault(order_id, set()).add(n)
    both = {i for i, callers in after.items() if len(callers) > 1}
    assert not both, f"sagas still driven by both instances after the handover: {both}"
    assert set(waiting) <= set(after), "every saga was driven on"
    for n, process in enumerate(system.order):
        log = process.log_path.read_text()
        for order_id in waiting:
            adoptions = log.count(f"saga {order_id} adopted")
            assert adoptions <= (1 if n == 1 else 0), (n, order_id, adoptions)

    start_payment(system)
    wait_for(lambda: all_confirmed(system, "rich", waiting), "the waiting orders", timeout=90)
    report = check_databases(system.databases)
    assert report.ok and not report.parked, (report.problems, report.parked)
    record_fault(
        f"order instance's clock jumped {JUMP_SECONDS:g} s ahead, 20 open sagas",
        {"ok": 20, "failed": 0, "unknown": 0},
    )
