"""Starts service processes on one machine, for the tests and for shopmesh.system.

Each service runs as `python -m services.<name>` with its own database under a work
directory, and is ready once it writes its ready file (after its health turns SERVING),
so callers wait for readiness instead of sleeping. Stopping is by PID: SIGTERM (the
service drains), then SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

REPO = pathlib.Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "services" / "demo_data.json"
READY_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0


class StartError(RuntimeError):
    """A service did not become ready; the message ends with the tail of its log."""


@dataclass
class ServiceProcess:
    """One running service instance: its process, port and files."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    workdir: pathlib.Path
    settings: dict[str, str] = field(default_factory=dict)
    module: str = ""
    instance: int = 1

    @property
    def label(self) -> str:
        """`inventory`, or `inventory-2` for a second instance."""
        return self.name if self.instance == 1 else f"{self.name}-{self.instance}"

    @property
    def ready_path(self) -> pathlib.Path:
        return self.workdir / f"{self.label}.ready"

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> ServiceProcess:
        """Waits for the ready file (written once health is SERVING); StartError if the
        process exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while not self.ready_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise StartError(f"{self.label} did not become ready; its log ends:\n{tail}")
            time.sleep(0.02)
        self.port = json.loads(self.ready_path.read_text())["port"]
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> pathlib.Path:
        return self.workdir / f"{self.label}.log"

    def signal(self, signum: int) -> None:
        signal_process(self.process, signum)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        return stop_process(self.process, timeout)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        kill_process(self.process)


def signal_process(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signals a child that has not exited (one that has is left alone)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> int:
    """SIGTERM, wait up to `timeout`, then SIGKILL; the exit code."""
    signal_process(process, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
    signal_process(process, signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_process(process, signal.SIGKILL)
    return process.wait()


def kill_process(process: subprocess.Popen[bytes]) -> None:
    """kill -9 and reap, as a crash would end it."""
    signal_process(process, signal.SIGKILL)
    process.wait()


def spawn_service(
    name: str,
    workdir: pathlib.Path,
    *,
    port: int = 0,
    settings: Mapping[str, str] | None = None,
    module: str = "",
    instance: int = 1,
) -> ServiceProcess:
    """Starts `python -m <module>` (default `services.<name>`) without waiting for it.

    `settings` are extra flags by field name (e.g. {"payment_target": "..."}). A service
    with a database keeps it in `workdir/<name>.db`, shared by all its instances, so a
    restart with the same workdir keeps state.
    """
    module = module or f"services.{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    flags = dict(settings or {})
    if module.startswith("services."):
        flags.setdefault("db_path", str(workdir / f"{name}.db"))
    label = name if instance == 1 else f"{name}-{instance}"
    ready = workdir / f"{label}.ready"
    ready.unlink(missing_ok=True)
    flags.update(port=str(port), ready_file=str(ready))
    command = [sys.executable, "-m", module]
    for key, value in flags.items():
        command += [f"--{key.replace('_', '-')}", value]
    with (workdir / f"{label}.log").open("ab") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return ServiceProcess(name, process, 0, workdir, flags, module, instance)


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
    merged = {k: v for k, v in service.settings.items() if k not in ("port", "ready_file")}
    merged.update(settings)
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
