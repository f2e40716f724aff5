"""Starts service processes on one machine, for the tests.

Each service runs as `python -m services.<name>` with its own database: a SQLite file
under a work directory, or (`databases`) a PostgreSQL database of its own. It is ready
once it writes its ready file (after its health turns SERVING), so callers wait for
readiness instead of sleeping. The process itself is shopmesh.processes' `ServiceProcess`,
the one `shopmesh run` supervises. A Stack is the three services without Consul, Envoy or
the control plane: order calls the others directly; with `events`, also a NATS server the
three publish to, the SMTP sink, and the notification and reporting services consuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from services.common import db
from services.common.database import Row, Tx
from shopmesh.check import Location, check_history, workdir_databases
from shopmesh.nats_server import NatsServer
from shopmesh.postgres import SERVICES, Cluster, ServiceDatabase
from shopmesh.processes import READY_TIMEOUT_SECONDS, ServiceProcess, spawn_service
from shopmesh.smtp_sink import sink_process
from shopmesh.system import store_flags
from shopmesh.tools import DEMO_DATA, free_ports
from tests.helpers import Client

DatabaseFactory = Callable[[pathlib.Path], dict[str, Location]]
"""Gives a stack or system (its folder named) a database per service."""


def server_databases(cluster: Cluster) -> DatabaseFactory:
    """A new role and database per service at each call (order_1, inventory_1, ...; then
    _2): no two stacks on one server share a row."""
    numbers = itertools.count(1)

    def make(folder: pathlib.Path) -> dict[str, Location]:
        n = next(numbers)
        return {name: cluster.service_database(f"{name}_{n}") for name in SERVICES}

    return make


def read_rows(location: Location, sql: str, params: Sequence[object] = ()) -> list[Row]:
    """The rows of one query (SQLite's `?` placeholders) on a service's database, read
    through the store interface as the service reads, on either backend; for a test that
    looks while the service is down."""

    async def read() -> list[Row]:
        password_file = location.password_file if isinstance(location, ServiceDatabase) else None
        place = location.url if isinstance(location, ServiceDatabase) else location
        store = await db.Store.open(place, password_file=password_file)  # no migrations
        try:

            async def query(tx: Tx) -> list[Row]:
                return await tx.fetchall(sql, params)

            return await store.db.read(query)
        finally:
            await store.aclose()

    return asyncio.run(read())


def start_service(
    name: str,
    workdir: pathlib.Path,
    *,
    port: int = 0,
    settings: Mapping[str, str] | None = None,
    timeout: float = READY_TIMEOUT_SECONDS,
    database: Location | None = None,
) -> ServiceProcess:
    """Starts `services.<name>` on its database, by default `workdir/<name>.db` (a restart
    keeps its state, as it keeps its flags), and returns once it serves; StartError if it
    does not."""
    flags = {**store_flags(database or workdir / f"{name}.db"), **(settings or {})}
    return spawn_service(name, workdir, port=port, settings=flags).wait_ready(timeout)


def restart(service: ServiceProcess, **settings: str) -> ServiceProcess:
    """Starts the instance again on the same port and database, with changed settings."""
    merged = {**service.settings, **settings}
    merged = {k: v for k, v in merged.items() if v != ""}
    return spawn_service(
        service.name,
        service.workdir,
        port=service.port,
        settings=merged,
        module=service.module,
        instance=service.instance,
    ).wait_ready()


CONSUMER_ACK_WAIT_SECONDS = "2"
"""The consumers' ack wait in an events stack: what a killed consumer left unacked comes
back after it (30 s by default)."""


@dataclass
class Events:
    """The asynchronous half of a stack: NATS (JetStream), the SMTP sink writing to
    `maildir`, and the two consumers. `restart_nats` and `restart` bring a killed one back
    on its ports, store and database."""

    nats: NatsServer
    sink: ServiceProcess
    maildir: pathlib.Path
    notification: ServiceProcess | None = None
    reporting: ServiceProcess | None = None

    def consumers(self) -> list[ServiceProcess]:
        return [c for c in (self.notification, self.reporting) if c is not None]

    def restart_nats(self, *, kill: bool = True) -> None:
        """kill -9 (or stop) the server, then start it again on its ports and store."""
        if kill:
            self.nats.kill()
        else:
            self.nats.stop()
        self.nats.start().wait_ready(READY_TIMEOUT_SECONDS)

    def stop(self) -> None:
        for consumer in self.consumers():
            consumer.stop()
        self.sink.stop()
        self.nats.stop()


def start_events(workdir: pathlib.Path) -> Events:
    """NATS on free ports (its store in `workdir/nats`) and the SMTP sink, both ready."""
    port, monitor_port = free_ports(2)
    nats = NatsServer(workdir / "nats", workdir / "nats.log", port, monitor_port).start()
    try:
        nats.wait_ready(READY_TIMEOUT_SECONDS)
        maildir = workdir / "mail"
        sink = sink_process(workdir, maildir).start().wait_ready()
    except BaseException:
        nats.stop()
        raise
    return Events(nats, sink, maildir)


@dataclass
class Stack:
    inventory: ServiceProcess
    payment: ServiceProcess
    order: ServiceProcess
    databases: dict[str, Location] = field(default_factory=dict)
    """Each service's database (shopmesh.check.check_databases reads them)."""
    events: Events | None = None

    def stop(self) -> None:
        if self.events is not None:
            for consumer in self.events.consumers():
                consumer.stop()
        for service in (self.order, self.payment, self.inventory):
            service.stop()
        if self.events is not None:
            self.events.stop()


def start_stack(
    workdir: pathlib.Path,
    seed_file: pathlib.Path = DEMO_DATA,
    ports: tuple[int, int, int] = (0, 0, 0),
    order_settings: Mapping[str, str] | None = None,
    databases: Mapping[str, Location] | None = None,
    *,
    events: bool = False,
) -> Stack:
    """Inventory and payment (seeded), then order pointed at them; each on its database
    in `databases`, by default `workdir/<name>.db`. With `events`, NATS and the SMTP sink
    first, the three publishing to NATS, then notification and reporting consuming."""
    at = {**workdir_databases(workdir), **(databases or {})}
    seed = {"seed_file": str(seed_file)}
    started: list[ServiceProcess] = []
    rig = start_events(workdir) if events else None
    publish = {"nats_url": rig.nats.url} if rig is not None else {}
    try:
        inventory = start_service(
            "inventory",
            workdir,
            port=ports[0],
            settings={**seed, **publish},
            database=at["inventory"],
        )
        started.append(inventory)
        payment = start_service(
            "payment",
            workdir,
            port=ports[1],
            settings={**seed, **publish},
            database=at["payment"],
        )
        started.append(payment)
        order = start_service(
            "order",
            workdir,
            port=ports[2],
            database=at["order"],
            settings={
                "inventory_target": inventory.target,
                "payment_target": payment.target,
                **publish,
                **(order_settings or {}),
            },
        )
        started.append(order)
        if rig is not None:
            consuming = {
                "nats_url": rig.nats.url,
                "consumer_ack_wait_seconds": CONSUMER_ACK_WAIT_SECONDS,
            }
            rig.notification = start_service(
                "notification",
                workdir,
                database=at["notification"],
                settings={**seed, **consuming, "smtp": rig.sink.target},
            )
            rig.reporting = start_service(
                "reporting",
                workdir,
                database=at["reporting"],
                settings={**consuming, "inventory_target": inventory.target},
            )
    except BaseException:
        for service in reversed(started):
            service.stop()
        if rig is not None:
            rig.stop()
        raise
    return Stack(inventory, payment, order, at, rig)


StackFactory = Callable[..., tuple[Stack, Client]]


@contextlib.contextmanager
def stack_factory(
    workdir: pathlib.Path,
    seed_file: pathlib.Path,
    databases: DatabaseFactory = workdir_databases,
) -> Iterator[StackFactory]:
    """Yields a factory that starts the three services as processes (order settings as
    keyword arguments), each stack on databases from `databases`, and returns the stack
    with a client; stops every stack it started, by PID, on exit."""
    started: list[tuple[Stack, Client]] = []

    def make(**order_settings: str) -> tuple[Stack, Client]:
        stack = start_stack(
            workdir, seed_file, order_settings=order_settings, databases=databases(workdir)
        )
        started.append((stack, Client(stack)))
        return started[-1]

    try:
        yield make
    finally:
        for stack, client in started:
            client.close()
            stack.stop()


@contextlib.contextmanager
def logs_checked(databases: DatabaseFactory) -> Iterator[DatabaseFactory]:
    """`databases`, and on exit every order database it gave checked: each order's event
    log replays to its row and saga (shopmesh.check.check_history, the part of `shopmesh
    check` that services.order.history does). For the tests whose stacks or systems
    `shopmesh check` does not read at their end."""
    given: list[dict[str, Location]] = []

    def make(folder: pathlib.Path) -> dict[str, Location]:
        given.append(databases(folder))
        return given[-1]

    yield make
    problems = [
        problem
        for made in given
        if not isinstance(made["order"], pathlib.Path) or made["order"].exists()
        for problem in check_history(made["order"]).problems
    ]
    assert not problems, problems
