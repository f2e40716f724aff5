"""A local NATS server with JetStream: the events' broker (docs/events-delivery.md).

`nats-server` (Debian bookworm's 2.9.10, unpacked into .tools/ by tools/install-nats) runs
as a `Process` (shopmesh/processes.py): JetStream on, its file store under
`<workdir>/nats` (the server puts its streams in `jetstream/` there), client and
monitoring ports on 127.0.0.1 only. It is ready once its monitoring endpoint `/jsz`
answers with JetStream enabled and its client port takes a connection: the server
starts its monitoring first, then JetStream (loading the streams), then the client
listener, so neither alone says a client would be served. Stopped by PID: SIGINT, the
server's clean shutdown (exit code 0; SIGTERM does the same but exits with 1), then
SIGTERM and SIGKILL if it does not exit in time. Neither syncs the store to disk (2.9.10
closes its files unsynced): only the server's 2-minute sync timer and the kernel's own
writeback do.

The command line has everything, so no config file: 2.9.10 has no setting that changes
how JetStream syncs to disk (`sync_interval` arrived in 2.10 and 2.9.10 refuses the key).
"""

from __future__ import annotations

import json
import pathlib
import signal
import socket
import urllib.error
import urllib.request
from typing import Any, Self

from shopmesh.processes import STOP_TIMEOUT_SECONDS, Process
from shopmesh.tools import tool, write_private

HOST = "127.0.0.1"
SERVER_NAME = "shopmesh"
"""Fixed, so its logs and monitoring name the same server at every start (the default is
a random one)."""


def jetstream_info(monitor_port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """The server's `/jsz` (JetStream's state); None if nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{monitor_port}/jsz", timeout=timeout) as got:
            info: dict[str, Any] = json.loads(got.read())
            return info
    except (urllib.error.URLError, OSError, ValueError):
        return None


def jetstream_enabled(monitor_port: int) -> bool:
    info = jetstream_info(monitor_port)
    return info is not None and "config" in info and not info.get("disabled", False)


def accepts(port: int, address: str = HOST) -> bool:
    """Whether something listens on `address`:`port`."""
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


class NatsServer(Process):
    """nats-server with JetStream, its store in `store_dir`, on `port` (clients) and
    `monitor_port` (HTTP monitoring); started again, it takes the same ports and store."""

    def __init__(
        self,
        store_dir: pathlib.Path,
        log_path: pathlib.Path,
        port: int,
        monitor_port: int,
        security: dict[str, Any] | None = None,
        *,
        address: str = HOST,
        server_name: str = SERVER_NAME,
        cluster: dict[str, Any] | None = None,
    ) -> None:
        """`security`: TLS and authorization blocks (shopmesh/nats_security.py); clients
        then connect with tls:// and a certificate. The server then reads everything from
        an owner-only config file beside its log, so that SIGHUP reloads it (2.9.10
        refuses a reload whose file leaves out what flags had set, the server name).
        `address`: where clients connect (monitoring stays on 127.0.0.1); `cluster`: the
        config's cluster block (a node of several: shopmesh/cluster.py), which needs
        `security`."""
        self.store_dir = store_dir.resolve()
        self.port = port
        self.monitor_port = monitor_port
        self.address = address
        self.secure = security is not None
        options: dict[str, Any] = {
            "server_name": server_name,
            "host": address,
            "port": port,
            "http": f"{HOST}:{monitor_port}",
            "jetstream": {"store_dir": str(self.store_dir)},
        }
        if cluster is not None:
            options["cluster"] = cluster
        if security is None:
            flags = [
                "--jetstream",
                *("--store_dir", str(self.store_dir)),
                *("--addr", HOST),
                *("--port", str(port)),
                *("--http_port", str(monitor_port)),
                *("--server_name", SERVER_NAME),
            ]
        else:
            config = log_path.with_name(log_path.stem + ".conf")
            # nats-server reads JSON as its own format.
            written = write_private(config, json.dumps({**options, **security}, indent=1))
            flags = ["-c", str(written)]
        super().__init__(
            "nats",
            log_path,
            [tool("nats-server"), *flags],
            ready=lambda: jetstream_enabled(monitor_port) and accepts(port, address),
        )

    @property
    def url(self) -> str:
        """What a client connects to."""
        return f"{'tls' if self.secure else 'nats'}://{self.address}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.monitor_port}"

    def start(self) -> Self:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        super().start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        # The server handles one signal at a time and exits at the end of the first
        # shutdown, so the SIGTERM that Process.stop sends next changes nothing.
        self.signal(signal.SIGINT)
        return super().stop(timeout)
