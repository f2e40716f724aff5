"""Start-up shared by the three services: build the server, serve, stop gracefully.

`build_server` returns `(server, port)` and binds port 0 in tests, as grpc's own examples
do. `main` is each service's entry point: settings, logging, uvloop, then `serve` until
SIGTERM or SIGINT, when health turns NOT_SERVING and in-flight calls drain.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import pathlib
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import logs, migrations, reflection, tls
from services.common.config import ConfigError, ServerConfig, load
from services.common.interceptor import ErrorInterceptor
from services.common.peers import PeerInterceptor, parse_names
from services.common.registration import Instance, Registration

log = logging.getLogger(__name__)

C = TypeVar("C", bound=ServerConfig)

# Request metadata a call may carry. gRPC's default is 8 KiB (between 8 and 10 KiB it
# refuses a random share of calls, with a message listing every header), but the gateway
# admits 16 KiB of client headers (gateway/envoy.yaml, max_request_headers_kb) and adds its
# own: such a call must be served, not refused by a limit the client cannot see.
MAX_METADATA_BYTES = 64 * 1024


class Service(Protocol):
    """What a service hands to the shared start-up."""

    @property
    def name(self) -> str:
        """Short name, used in logs and as the ErrorInfo domain (`<name>.shopmesh`)."""

    @property
    def service_names(self) -> Sequence[str]:
        """Full names of the gRPC services it serves, for health and reflection."""

    @property
    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        """The service's own server interceptors, inside the error mapping (usually none)."""

    def register(self, server: grpc.aio.Server) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def build_server(
    service: Service,
    host: str = "127.0.0.1",
    port: int = 0,
    tls_dir: pathlib.Path | None = None,
    allowed_callers: str = "gateway",
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A server with the service, health and reflection, bound but not started; mutual
    TLS only with the certificate in `tls_dir` (services/common/tls.py), serving the
    `allowed_callers` (services/common/peers.py), else plaintext."""
    admission = [] if tls_dir is None else [PeerInterceptor(parse_names(allowed_callers))]
    server = grpc.aio.server(
        interceptors=[
            ErrorInterceptor(f"{service.name}.shopmesh"),
            *admission,
            *service.interceptors,
        ],
        options=[
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            *(tls.SERVER_OPTIONS if tls_dir is not None else ()),
        ],
    )
    service.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable((*service.service_names, health.SERVICE_NAME), server)
    try:
        if tls_dir is None:
            bound = server.add_insecure_port(f"{host}:{port}")
        else:
            credentials = tls.server_credentials(tls.CertificateFiles(tls_dir))
            bound = server.add_secure_port(f"{host}:{port}", credentials)
    except RuntimeError as error:  # grpc's way of saying the bind failed
        raise OSError(f"cannot listen on {host}:{port} (is the port in use?)") from error
    return server, bound, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, service: Service) -> None:
    for name in ("", *service.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def serve(service: Service, config: ServerConfig) -> None:
    """Serves until SIGTERM/SIGINT, then stops gracefully.

    Stopping: deregister from Consul (the control plane stops sending traffic here),
    health NOT_SERVING, then let in-flight calls finish for up to `grace_seconds`.
    """
    server, port, health_servicer = await build_server(
        service, config.host, config.port, config.tls_dir, config.allowed_callers
    )
    await server.start()
    await service.start()
    await set_serving(health_servicer, service)
    log.info(
        "%s serving %s on %s:%d (pid %d)",
        service.name,
        "mutual TLS" if config.tls_dir else "plaintext",
        config.host,
        port,
        os.getpid(),
    )
    registration, keeper = None, None
    if config.consul_http:
        address = config.advertise_address or config.host
        tls_on = config.tls_dir is not None
        instance = Instance(service.name, address, port, _version(), tls_on)
        registration = Registration(config.consul_access(config.consul_http), instance)
        keeper = asyncio.create_task(
            registration.keep_registered(config.registration_interval_seconds)
        )
    if config.ready_file is not None:
        # Written to a temporary name first so a reader never sees half a file.
        partial = config.ready_file.with_suffix(".partial")
        partial.write_text(json.dumps({"port": port, "pid": os.getpid()}))
        partial.replace(config.ready_file)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()

    log.info(
        "%s stopping: NOT_SERVING, draining for up to %.1fs", service.name, config.grace_seconds
    )
    if registration is not None and keeper is not None:
        keeper.cancel()
        await registration.leave()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.grace_seconds)
    await service.stop()
    log.info("%s stopped", service.name)


def _version() -> str:
    try:
        return importlib.metadata.version("shopmesh")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def main(
    name: str,
    config_class: type[C],
    make_service: Callable[[C], Awaitable[Service]],
    argv: Sequence[str] | None = None,
) -> int:
    """Entry point of a service process: `python -m <package>`."""
    # The package that defines the service is the one `python -m` runs (services.order,
    # gateway.controlplane), so --help names the command that was really typed.
    package = make_service.__module__.rpartition(".")[0]
    try:
        config = load(config_class, argv, os.environ, prog=f"python -m {package}")
    except ConfigError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    logs.setup(name, config.log_level)

    async def run() -> None:
        await serve(await make_service(config), config)

    try:
        uvloop.run(run())
    except Exception as error:
        if not isinstance(error, startup_errors()):
            raise
        log.error("%s cannot start: %s", name, error)
        return 1
    return 0


def startup_errors() -> tuple[type[Exception], ...]:
    """What a service that cannot start raises: its database unreachable, refusing the
    login or unmigratable, or its certificate unusable. The migrations run on psycopg (on
    PostgreSQL), the pool on asyncpg, whose errors are raised as ConnectionError, an
    OSError. psycopg's error is named only if psycopg was loaded: a process on SQLite
    never imports it (about 8 MB of memory per process)."""
    kinds: tuple[type[Exception], ...] = (
        OSError,
        sqlite3.Error,
        migrations.MigrationError,
        tls.TLSError,
    )
    psycopg = sys.modules.get("psycopg")
    return (*kinds, psycopg.Error) if psycopg is not None else kinds
