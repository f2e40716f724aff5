"""Starts service processes on one machine, for the tests.

Each service runs as `python -m services.<name>` with its own database: a SQLite file
under a work directory, or (`databases`) a PostgreSQL database of its own. It is ready
once it writes its ready file (after its health turns SERVING), so callers wait for
readiness instead of sleeping. The process itself is shopmesh.processes' `ServiceProcess`,
the one `shopmesh run` supervises. A Stack is the three services without Consul, Envoy or
the control plane: order calls the others directly.
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
from shopmesh.postgres import SERVICES, Cluster, ServiceDatabase
from shopmesh.processes import READY_TIMEOUT_SECONDS, ServiceProcess, spawn_service
from shopmesh.system import store_flags
from shopmesh.tools import DEMO_DATA
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


@dataclass
class Stack:
    inventory: ServiceProcess
    payment: ServiceProcess
    order: ServiceProcess
    databases: dict[str, Location] = field(default_factory=dict)
    """Each service's database (shopmesh.check.check_databases reads them)."""

    def stop(self) -> None:
        for service in (self.order, self.payment, self.inventory):
            service.stop()


def start_stack(
    workdir: pathlib.Path,
    seed_file: pathlib.Path = DEMO_DATA,
    ports: tuple[int, int, int] = (0, 0, 0),
    order_settings: Mapping[str, str] | None = None,
    databases: Mapping[str, Location] | None = None,
) -> Stack:
    """Inventory and payment (seeded), then order pointed at them; each on its database
    in `databases`, by default `workdir/<name>.db`."""
    at = {**workdir_databases(workdir), **(databases or {})}
    seed = {"seed_file": str(seed_file)}
    inventory = start_service(
        "inventory", workdir, port=ports[0], settings=seed, database=at["inventory"]
    )
    try:
        payment = start_service(
            "payment", workdir, port=ports[1], settings=seed, database=at["payment"]
        )
        try:
            order = start_service(
                "order",
                workdir,
                port=ports[2],
                database=at["order"],
                settings={
                    "inventory_target": inventory.target,
                    "payment_target": payment.target,
                    **(order_settings or {}),
                },
            )
        except BaseException:
            payment.stop()
            raise
    except BaseException:
        inventory.stop()
        raise
    return Stack(inventory, payment, order, at)


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
