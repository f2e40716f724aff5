"""Starts service processes on one machine, for the tests.

Each service runs as `python -m services.<name>` with its own database under a work
directory, and is ready once it writes its ready file (after its health turns SERVING),
so callers wait for readiness instead of sleeping. The process itself is
shopmesh.processes' `ServiceProcess`, the one `shopmesh run` supervises. A Stack is the
three services without Consul, Envoy or the control plane: order calls the others
directly.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from shopmesh.processes import READY_TIMEOUT_SECONDS, ServiceProcess, spawn_service
from shopmesh.tools import DEMO_DATA
from tests.helpers import Client


def start_service(
    name: str,
    workdir: pathlib.Path,
    *,
    port: int = 0,
    settings: Mapping[str, str] | None = None,
    timeout: float = READY_TIMEOUT_SECONDS,
) -> ServiceProcess:
    """Starts `services.<name>` on its database `workdir/<name>.db` (so a restart keeps its
    state) and returns once it serves; StartError if it does not."""
    flags = {"db_path": str(workdir / f"{name}.db"), **(settings or {})}
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

    def stop(self) -> None:
        for service in (self.order, self.payment, self.inventory):
            service.stop()


def start_stack(
    workdir: pathlib.Path,
    seed_file: pathlib.Path = DEMO_DATA,
    ports: tuple[int, int, int] = (0, 0, 0),
    order_settings: Mapping[str, str] | None = None,
) -> Stack:
    """Inventory and payment (seeded), then order pointed at them."""
    seed = {"seed_file": str(seed_file)}
    inventory = start_service("inventory", workdir, port=ports[0], settings=seed)
    try:
        payment = start_service("payment", workdir, port=ports[1], settings=seed)
        try:
            order = start_service(
                "order",
                workdir,
                port=ports[2],
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
    return Stack(inventory, payment, order)


StackFactory = Callable[..., tuple[Stack, Client]]


@contextlib.contextmanager
def stack_factory(workdir: pathlib.Path, seed_file: pathlib.Path) -> Iterator[StackFactory]:
    """Yields a factory that starts the three services as processes (order settings as
    keyword arguments) and returns the stack with a client; stops every stack it started,
    by PID, on exit."""
    started: list[tuple[Stack, Client]] = []

    def make(**order_settings: str) -> tuple[Stack, Client]:
        stack = start_stack(workdir, seed_file, order_settings=order_settings)
        started.append((stack, Client(stack)))
        return started[-1]

    try:
        yield make
    finally:
        for stack, client in started:
            client.close()
            stack.stop()
