"""A NATS server with JetStream for tests (shopmesh/nats_server.py: the real nats-server):
on free ports, its store in a directory of its own, ready (JetStream up) before it is
handed out, stopped by PID afterwards."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator

from shopmesh.nats_server import NatsServer
from shopmesh.tools import free_ports

READY_SECONDS = 20.0


def restart(server: NatsServer, *, kill: bool = False) -> None:
    """Stops the server (SIGTERM, or kill -9 as a crash would) and starts it again on the
    same ports and store; returns once JetStream is up."""
    if kill:
        server.kill()
    else:
        server.stop()
    server.start().wait_ready(READY_SECONDS)


@contextlib.contextmanager
def running_nats(workdir: pathlib.Path) -> Iterator[NatsServer]:
    """A started server, its store in `workdir/nats` and its log `workdir/nats.log`."""
    port, monitor_port = free_ports(2)
    workdir.mkdir(parents=True, exist_ok=True)
    server = NatsServer(workdir / "nats", workdir / "nats.log", port, monitor_port)
    server.start()
    try:
        server.wait_ready(READY_SECONDS)
        yield server
    finally:
        server.stop()
