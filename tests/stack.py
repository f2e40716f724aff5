"""Starts service processes on one machine, for the tests.

Each service runs as `python -m services.<name>` with its own database under a work
directory, and is ready once it writes its ready file (after its health turns SERVING),
so callers wait for readiness instead of sleeping. The process itself is
shopmesh.processes' `ServiceProcess`, the one `shopmesh run` supervises (re-exported here
for the tests; this harness is to move under tests/, which removes the upward import).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

from shopmesh.processes import (
    READY_TIMEOUT_SECONDS,
    ServiceProcess,
    StartError,
    signal_process,
    spawn_service,
    stop_process,
)

REPO = pathlib.Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "services" / "demo_data.json"

__all__ = [
    "DEMO_DATA",
    "REPO",
    "ServiceProcess",
    "Stack",
    "StartError",
    "restart",
    "signal_process",
    "start_service",
    "start_stack",
    "stop_process",
]


def start_service(
    name: str,
    workdir: pathlib.Path,
    *,
    port: int = 0,
    settings: Mapping[str, str] | None = None,
    timeout: float = READY_TIMEOUT_SECONDS,
) -> ServiceProcess:
    """Starts `services.<name>` and returns once it serves; StartError if it does not."""
    return spawn_service(name, workdir, port=port, settings=settings).wait_ready(timeout)


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
