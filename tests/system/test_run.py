"""`shopmesh run` as a user runs it: the real command in its own process group (as a
terminal's foreground job is), on free ports, its output read line by line. A crashed part
comes back by itself, a crash loop makes it give up and say so, Ctrl-C stops the parts in
order (services before Consul), and busy Consul default ports do not keep it from starting."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from services.common.registration import consul_client
from shopmesh import tokens
from shopmesh.check import workdir_databases
from shopmesh.nats_server import jetstream_info
from shopmesh.system import Ports, Settings, consul_process
from shopmesh.tools import DEMO_DATA, REPO, free_ports
from tests.helpers import Client, Ledger, run_command
from tests.postgres_harness import postgres_workdir
from tests.system_helpers import Traffic, settle

SHOPMESH = str(pathlib.Path(sys.executable).parent / "shopmesh")
START_SECONDS = 60.0
STOP_SECONDS = 60.0
DEMO = json.loads(DEMO_DATA.read_text())
DEMO_LEDGER = Ledger(
    {p["sku"]: p["quantity"] for p in DEMO["products"]},
    {a["user_id"]: a["balance_minor"] for a in DEMO["accounts"]},
)


class ShopmeshRun:
    """One `shopmesh run` process and everything it printed (stdout and stderr, merged)."""

    def __init__(self, workdir: pathlib.Path, *flags: str) -> None:
        self.workdir = workdir
        public, internal, admin, xds, consul_http, nats, nats_monitor = free_ports(7)
        self.public_target = f"127.0.0.1:{public}"
        self.nats_monitor_port = nats_monitor
        command = [
            SHOPMESH,
            "run",
            *("--workdir", str(workdir), "--keys-dir", str(workdir / "jwt")),
            *("--public-port", str(public), "--internal-port", str(internal)),
            *("--admin-port", str(admin), "--xds-port", str(xds)),
            *("--consul-port", str(consul_http)),
            *("--nats-port", str(nats), "--nats-monitor-port", str(nats_monitor), *flags),
        ]
        self.lines: list[str] = []
        self._changed = threading.Condition()
        # A session of its own: the process group a terminal would signal on Ctrl-C.
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = START_SECONDS) -> re.Match[str]:
        """The first printed line matching `pattern`; fails if the command exits first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        return found
                left = deadline - time.monotonic()
                if not self._reader.is_alive() or left <= 0:
                    exited = not self._reader.is_alive()  # its output ends when it does
                    state = f"exited with {self.process.wait(10)}" if exited else "running"
                    raise AssertionError(
                        f"no line matching {pattern!r} ({state}); output:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(min(left, 0.5))

    def wait_running(self) -> None:
        self.wait_for_line(r"^shopmesh is running")

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)

    def exit_code(self, timeout: float = STOP_SECONDS) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    def token(self, user: str, *scopes: str, ttl: int = tokens.DEFAULT_TTL_SECONDS) -> str:
        return tokens.issue(user, scopes, ttl, self.workdir / "jwt")

    def ready_port(self, label: str) -> int:
        port: int = json.loads((self.workdir / f"{label}.ready").read_text())["port"]
        return port

    def ready_pid(self, label: str) -> int:
        pid: int = json.loads((self.workdir / f"{label}.ready").read_text())["pid"]
        return pid

    def close(self) -> None:
        """SIGTERM (it stops its parts), then, if it does not exit in time, SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


# For a test that orders faster than a user may by default (gateway.envoy_config.Limits).
ORDER_RATE_FLAGS = (
    *("--gateway-limit", "user_orders_per_second=20"),
    *("--gateway-limit", "user_order_burst=20"),
)


@pytest.fixture
def shopmesh_run(tmp_path: pathlib.Path) -> Iterator[Callable[..., ShopmeshRun]]:
    """Starts `shopmesh run` (workdir under tmp_path, extra flags as arguments); stops
    every one after the test."""
    started: list[ShopmeshRun] = []

    def run(*flags: str) -> ShopmeshRun:
        workdir = tmp_path / f"run{len(started)}"
        workdir.mkdir()
        started.append(ShopmeshRun(workdir, *flags))
        return started[-1]

    yield run
    for running in started:
        running.close()


@dataclass
class Target:
    target: str


@dataclass
class Targets:
    order: Target
    inventory: Target
    payment: Target


def direct_client(running: ShopmeshRun) -> Client:
    """Straight to each service's first instance, at the port its ready file names."""
    at = {
        n: Target(f"127.0.0.1:{running.ready_port(n)}") for n in ("order", "inventory", "payment")
    }
    return Client(Targets(at["order"], at["inventory"], at["payment"]))


def test_a_service_killed_under_shopmesh_run_comes_back(
    shopmesh_run: Callable[..., ShopmeshRun],
) -> None:
    # alice orders up to 10 times a second, twice the default per-user order rate.
    running = shopmesh_run(*ORDER_RATE_FLAGS)
    running.wait_running()
    with Traffic(running, user="alice", sku="SKU-TEA-001", interval=0.1) as traffic:
        traffic.wait_for_ok(3)
        killed_at = time.monotonic()
        os.kill(running.ready_pid("inventory"), signal.SIGKILL)
        running.wait_for_line(r"inventory exited with signal 9; restarting in 0.5 s \(restart 1\)")
        running.wait_for_line(r"inventory is back")
        back = time.monotonic() - killed_at
        traffic.wait_for_ok(10)  # through Envoy, to the restarted instance
    assert running.process.poll() is None, running.output
    assert traffic.outcomes["ORDER_STATE_CONFIRMED"] == traffic.summary()["ok"], traffic.outcomes
    fault = f"inventory kill -9 under shopmesh run: back in {back:.1f} s"
    settle(direct_client(running), DEMO_LEDGER, traffic, fault, workdir_databases(running.workdir))
    # The services' outbox relays publish to the NATS it started: every event of every
    # outbox is in the stream once, the killed instance's too.
    events = outbox_events(running.workdir)
    assert events > 0
    deadline = time.monotonic() + START_SECONDS
    while stream_messages(running) != events:
        assert time.monotonic() < deadline, (events, stream_messages(running))
        time.sleep(0.1)
        events = outbox_events(running.workdir)


def outbox_events(workdir: pathlib.Path) -> int:
    """How many events the three services' outboxes hold (SQLite files in `workdir`)."""
    total = 0
    for name in ("inventory", "payment", "order"):
        with contextlib.closing(sqlite3.connect(workdir / f"{name}.db")) as conn:
            total += conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    return total


def stream_messages(running: ShopmeshRun) -> int:
    info = jetstream_info(running.nats_monitor_port)
    assert info is not None
    return int(info["messages"])


def test_a_crash_loop_makes_shopmesh_run_give_up_and_say_so(
    shopmesh_run: Callable[..., ShopmeshRun],
) -> None:
    running = shopmesh_run()
    running.wait_running()
    # From now on inventory cannot open its database (a directory stands in its place), so
    # every restart exits at once.
    database = running.workdir / "inventory.db"
    database.rename(running.workdir / "inventory.db.moved")
    database.mkdir()
    os.kill(running.ready_pid("inventory"), signal.SIGKILL)
    running.wait_for_line(r"inventory crashed \d+ times in \d+ s.*giving up", timeout=90)
    assert running.exit_code() == 1, running.output
    assert "inventory exited with code 1; restarting in" in running.output
    assert "stopped." in running.output


def test_ctrl_c_stops_the_services_before_consul(shopmesh_run: Callable[..., ShopmeshRun]) -> None:
    running = shopmesh_run("--instances", "2")
    running.wait_running()
    # NATS runs with JetStream, its store under the workdir, and says where.
    found = running.wait_for_line(
        r"^  NATS JetStream +nats://127\.0\.0\.1:(\d+) \(monitoring http://127\.0\.0\.1:(\d+)/jsz;"
        r" store in (.+)\)$"
    )
    assert int(found[2]) == running.nats_monitor_port
    store = running.workdir.resolve() / "nats"
    assert found[3] == str(store)
    jetstream = jetstream_info(running.nats_monitor_port)
    assert jetstream is not None
    assert jetstream["config"]["store_dir"] == str(store / "jetstream"), jetstream
    # The SMTP sink for the notifications, its Maildir, and how to see one.
    sink = running.wait_for_line(
        r"^  SMTP +sink 127\.0\.0\.1:(\d+), writing each message to (.+)/new$"
    )
    assert (pathlib.Path(sink[2]) / "new").is_dir()
    running.wait_for_line(rf"^  ls {re.escape(sink[2])}/new$")
    running.wait_for_line(r"^  curl .*/v1/notifications$")
    # A supervised part like the others: killed, it comes back on its ports.
    os.kill(child_pid(running.process.pid, "nats-server"), signal.SIGKILL)
    running.wait_for_line(r"nats exited with signal 9; restarting in 0\.5 s \(restart 1\)")
    running.wait_for_line(r"nats is back")
    assert jetstream_info(running.nats_monitor_port) is not None
    running.ctrl_c()
    assert running.exit_code() == 0, running.output
    assert jetstream_info(running.nats_monitor_port) is None  # stopped, not left behind
    assert "Server Exiting" in (running.workdir / "nats.log").read_text()
    with pytest.raises(OSError):  # the sink stopped too
        socket.create_connection(("127.0.0.1", int(sink[1])), timeout=2).close()
    # What it says while it starts: one step a line, each a phrase.
    assert re.findall(r"^\[ *[0-9.]+s\] (.+)\.\.\.$", running.output, re.MULTILINE) == [
        "starting nats and consul",
        "starting the control plane, the services and envoy",
        "waiting until envoy sees every instance healthy",
    ], running.output
    logs = {
        log.name: log.read_text()
        for log in running.workdir.glob("*.log")
        if log.name.startswith(("order", "inventory", "payment", "notification", "controlplane"))
    }
    assert len(logs) == 9, sorted(logs)
    for name, text in logs.items():
        assert "could not deregister" not in text, f"{name}:\n{text}"
        assert "deregistered" in text, f"{name}:\n{text}"
    consul_log = (running.workdir / "consul.log").read_text()
    assert "Deregistering service failed" not in consul_log, consul_log
    # Consul alone on the same data dir knows no service: none left a stale entry.
    assert consul_services(running.workdir) == ["consul"]


def child_pid(parent: int, program: str) -> int:
    """The PID of `parent`'s child process running `program`."""
    for children in pathlib.Path(f"/proc/{parent}/task").glob("*/children"):
        for pid in children.read_text().split():
            argv0 = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if pathlib.Path(argv0.decode()).name == program:
                return int(pid)
    raise AssertionError(f"{parent} has no child running {program}")


def consul_services(workdir: pathlib.Path, ports: Ports | None = None) -> list[str]:
    """The services Consul knows (catalog and agent) once restarted alone on `workdir`
    (on free ports unless given)."""
    ports = ports or Ports.free()
    consul = consul_process(Settings(workdir=workdir, ports=ports)).start()
    try:
        consul.wait_until(consul.is_ready, "Consul electing itself leader", START_SECONDS)
        client = consul_client(f"127.0.0.1:{ports.consul_http}")
        # A consistent read: just after its election the leader may still be replaying its
        # raft log, and a default read then shows registrations whose deregistration it
        # has not applied yet (measured: 25 to 195 of 300 deregistered services).
        _, catalog = client.catalog.services(consistency="consistent")
        return sorted({*catalog, *(s["Service"] for s in client.agent.services().values())})
    finally:
        consul.stop()


def test_shopmesh_run_starts_beside_a_consul_on_the_default_ports(
    shopmesh_run: Callable[..., ShopmeshRun],
) -> None:
    """Consul's server RPC, serf and DNS ports are free ones unless set: whatever holds
    8300, 8301 and 8600 (here the test, where nothing else does yet) is no obstacle."""
    with contextlib.ExitStack() as held:
        for port in (8300, 8301, 8600):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                probe = held.enter_context(socket.socket(socket.AF_INET, kind))
                with contextlib.suppress(OSError):  # taken already: busy either way
                    probe.bind(("127.0.0.1", port))
                    if kind == socket.SOCK_STREAM:
                        probe.listen()
        running = shopmesh_run()
        running.wait_running()
    found = running.wait_for_line(r"DNS :(\d+), server RPC :(\d+), serf LAN :(\d+)")
    assert {int(p) for p in found.groups()}.isdisjoint({8300, 8301, 8600}), found.group(0)
    running.ctrl_c()
    assert running.exit_code() == 0, running.output


def test_consul_elects_itself_again_on_other_ports(tmp_path: pathlib.Path) -> None:
    """Its raft configuration keeps the server address of the first start; a single server
    never dials it, so a restart on other free ports still elects a leader, registrations
    kept."""
    settings = Settings(workdir=tmp_path, ports=Ports.free())
    consul = consul_process(settings).start()
    try:
        consul.wait_until(consul.is_ready, "Consul electing itself leader", START_SECONDS)
        consul_client(f"127.0.0.1:{settings.ports.consul_http}").agent.service.register(
            "kept", service_id="kept-1", port=1
        )
    finally:
        consul.stop()
    moved = Ports(*free_ports(8, avoid=dataclasses.astuple(settings.ports)))
    assert consul_services(tmp_path, moved) == ["consul", "kept"]


def service_rows(running: ShopmeshRun, port: int, service: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` in a service's PostgreSQL database, read as the service's own role
    with the password `shopmesh run --postgres` generated for it."""
    secret = running.workdir / "postgres" / "secrets" / f"{service}.password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    url = f"postgresql://{service}@127.0.0.1:{port}/{service}"
    with psycopg.connect(url, password=secret.read_text().strip(), connect_timeout=5) as conn:
        return conn.execute(sql).fetchall()


def test_shopmesh_run_postgres_keeps_every_order_in_postgresql_and_stops_it_last() -> None:
    """`shopmesh run --postgres` starts a cluster under WORKDIR/postgres, says where its
    data and passwords are, and the services keep their state there: an order placed over
    REST through Envoy is in the order, inventory and payment databases, read as each
    service's role, and no SQLite file is made; `shopmesh check` reads them there, its
    events' part too. Ctrl-C stops the server after the services, which stop without a
    storage error."""
    # Not under tmp_path: as root the server runs as the postgres user, which pytest's
    # 0700 base directory would keep out (tests/postgres_harness.py).
    with postgres_workdir() as workdir:
        running = ShopmeshRun(workdir, "--postgres")
        try:
            running.wait_running()
            found = running.wait_for_line(
                r"^  databases +PostgreSQL 127\.0\.0\.1:(\d+), a database and a role each for"
                r" inventory, payment, order, notification, reporting$"
            )
            port = int(found[1])
            root = workdir.resolve() / "postgres"
            at = re.escape(str(root))
            running.wait_for_line(f"^ +data in {at}/data, log {at}/postgres\\.log$")
            running.wait_for_line(rf"^ +passwords in {at}/secrets/<role>\.password \(mode 0600\)$")
            request = urllib.request.Request(
                f"http://{running.public_target}/v1/orders",
                data=json.dumps(
                    {"request_id": "pg-1", "line_items": [{"sku": "SKU-TEA-001", "quantity": 2}]}
                ).encode(),
                headers={
                    "Authorization": f"Bearer {running.token('alice')}",
                    "Content-Type": "application/json",
                },
            )
            with urllib.request.urlopen(request, timeout=20) as answer:
                order = json.loads(answer.read())["order"]
            assert order["state"] == "ORDER_STATE_CONFIRMED", order
            order_id = order["orderId"]
            assert service_rows(
                running, port, "order", "SELECT order_id, user_id, request_id, state FROM orders"
            ) == [(order_id, "alice", "pg-1", "CONFIRMED")]
            assert service_rows(
                running, port, "inventory", "SELECT order_id, state FROM reservations"
            ) == [(order_id, "COMMITTED")]
            assert service_rows(
                running, port, "payment", "SELECT order_id, amount_minor, state FROM payments"
            ) == [(order_id, 900, "CAPTURED")]
            assert list(workdir.glob("*.db*")) == []
            monitor = ("--nats-monitor-port", str(running.nats_monitor_port))
            checked = run_command(
                [SHOPMESH, "check", "--workdir", str(workdir), *monitor],
                timeout=60,
            )
            assert "1 orders (1 confirmed," in checked.stdout, checked.stdout  # in PostgreSQL
            # ... and its events: sent, notified once, mailed, in the read model.
            assert "events: outboxes sent, 1 final orders notified once" in checked.stdout
            assert checked.stdout.endswith("every promise holds\n"), checked.stdout
            postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
            running.ctrl_c()
            assert running.exit_code() == 0, running.output
        finally:
            running.close()
        with pytest.raises(ProcessLookupError):
            os.kill(postmaster, 0)  # the server is gone
        assert "database system is shut down" in (root / "postgres.log").read_text()
        for name in ("order", "inventory", "payment"):
            log = (workdir / f"{name}.log").read_text()
            assert f"{name} stopped" in log, log
            assert " ERROR " not in log, log  # its database was there until it stopped
