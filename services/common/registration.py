"""Registers a service instance in Consul, keeps it registered, and deregisters it.

Each instance registers itself (name, a unique id, address, port, version) with a gRPC
health check that Consul runs against the standard health service. The check's timeout
(2 s) and FailuresBeforeCritical (3) keep a briefly busy instance from flapping to
critical (measured on our 2-core machines: 1 s gRPC checks under CPU load marked every
instance critical at once). If the agent forgets the registration (a restarted agent, a
wiped data dir), `keep_registered` puts it back. py-consul is synchronous, so calls run
in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import threading
from dataclasses import dataclass
from typing import Any

import consul
import requests

log = logging.getLogger(__name__)

CHECK_INTERVAL = "1s"
CHECK_TIMEOUT = "2s"
FAILURES_BEFORE_CRITICAL = 3
# Consul 1.8's minimum; a crashed instance leaves the catalog a minute after it turns critical.
DEREGISTER_CRITICAL_AFTER = "1m"
CONSUL_TIMEOUT_SECONDS = 5.0

# What a Consul call can fail with: the agent down, slow, or answering an error.
CONSUL_ERRORS = (consul.ConsulException, requests.RequestException)


@dataclass(frozen=True)
class Instance:
    """One service instance as Consul knows it."""

    name: str
    address: str
    port: int
    version: str
    tls: bool = False
    """Whether it serves mutual TLS (Consul's check must then speak TLS)."""

    @property
    def service_id(self) -> str:
        return f"{self.name}-{self.address}-{self.port}"


@dataclass(frozen=True)
class ConsulAccess:
    """How to reach an agent's HTTP API: `host:port`, and where Consul is locked down
    (shopmesh/consul_security.py) the caller's ACL token and the certificate directory it
    calls HTTPS with (the agent verifies incoming certificates)."""

    http_address: str
    token_file: pathlib.Path | None = None
    tls_dir: pathlib.Path | None = None


def consul_client(access: ConsulAccess | str) -> consul.Consul:
    """A client for the agent (a ConsulAccess, or just its plaintext `host:port`)."""
    if isinstance(access, str):
        access = ConsulAccess(access)
    host, _, port = access.http_address.rpartition(":")
    token = access.token_file.read_text().strip() if access.token_file is not None else None
    secure: dict[str, Any] = {}
    if access.tls_dir is not None:
        secure = {
            "scheme": "https",
            "verify": str(access.tls_dir / "ca.pem"),
            "cert": (str(access.tls_dir / "cert.pem"), str(access.tls_dir / "key.pem")),
        }
    return consul.Consul(
        host=host,
        port=int(port),
        token=token,
        connections_timeout=CONSUL_TIMEOUT_SECONDS,
        **secure,
    )


def check_definition(instance: Instance) -> dict[str, Any]:
    check: dict[str, Any] = consul.Check.grpc(
        f"{instance.address}:{instance.port}",
        CHECK_INTERVAL,
        timeout=CHECK_TIMEOUT,
        deregister=DEREGISTER_CRITICAL_AFTER,
    )
    # py-consul has no argument for these; Consul 1.8.7 honours both keys.
    check["FailuresBeforeCritical"] = FAILURES_BEFORE_CRITICAL
    # We register only once health is SERVING, so start passing rather than critical:
    # traffic can come at once instead of after the first check interval.
    check["Status"] = "passing"
    if instance.tls:
        # The agent presents its own certificate (its cert_file, from our CA), which any
        # certified caller may use on the health service (services/common/peers.py). It
        # skips verifying the instance's: it dials an IP address, which our certificates
        # do not name, and Envoy verifies every instance's identity before calling it.
        check["GRPCUseTLS"] = True
        check["TLSSkipVerify"] = True
    return check


class Registration:
    """The registration of one instance with the local Consul agent."""

    def __init__(self, access: ConsulAccess | str, instance: Instance) -> None:
        self._client = consul_client(access)
        self.instance = instance
        # Cancelling keep_registered does not stop a register() already running in its
        # thread; the lock and flag make sure it cannot land after the deregistration.
        self._lock = threading.Lock()
        self._left = False

    def register(self) -> None:
        with self._lock:
            if not self._left:
                self._register()

    def _register(self) -> None:
        i = self.instance
        self._client.agent.service.register(
            i.name,
            service_id=i.service_id,
            address=i.address,
            port=i.port,
            tags=["grpc", f"version={i.version}"],
            meta={"version": i.version},
            check=check_definition(i),
        )

    def deregister(self) -> None:
        """Deregisters for good: a later (or in-flight) register() does nothing."""
        with self._lock:
            self._left = True
            self._client.agent.service.deregister(self.instance.service_id)

    def is_registered(self) -> bool:
        return self.instance.service_id in self._client.agent.services()

    async def keep_registered(self, interval: float) -> None:
        """Registers now, then every `interval` checks the agent still knows us."""
        registered = False
        while True:
            try:
                if not await asyncio.to_thread(self.is_registered):
                    await asyncio.to_thread(self.register)
                    verb = "re-registered" if registered else "registered"
                    log.info("%s %s in Consul", verb, self.instance.service_id)
                registered = True
            except CONSUL_ERRORS as error:
                log.warning("Consul unreachable (%s); will retry", type(error).__name__)
            await asyncio.sleep(interval)

    async def leave(self) -> None:
        """Deregisters, so traffic moves away before this instance stops."""
        try:
            await asyncio.to_thread(self.deregister)
            log.info("deregistered %s from Consul", self.instance.service_id)
        except CONSUL_ERRORS as error:
            log.warning("could not deregister from Consul (%s)", type(error).__name__)
