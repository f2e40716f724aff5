"""The control plane's settings (flags or SHOP_* variables; `python -m gateway.controlplane -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import ServerConfig, is_host_port, setting

ADS_PORT = 18000
"""Where Envoy's ADS stream connects unless told otherwise; `shopmesh run`'s default too."""
CONSUL_HTTP_PORT = 8500
"""Consul's own default HTTP port; `shopmesh run` starts its agent there too."""


@dataclass(frozen=True)
class ControlPlaneConfig(ServerConfig):
    """Settings of the control plane (it registers itself in Consul like the services)."""

    port: int = setting(ADS_PORT, "port Envoy's ADS stream connects to")
    watch_consul_http: str = setting(
        f"127.0.0.1:{CONSUL_HTTP_PORT}", "host:port of the Consul HTTP API to watch"
    )
    clusters: str = setting(
        "inventory,payment,order,notification,reporting", "comma-separated Consul services to serve"
    )
    envoy_tls_dir: pathlib.Path | None = setting(
        None,
        "the certificate directory Envoy serves and calls with (`shopmesh ca issue gateway`),"
        " sent to it over SDS and again after each renewal; unset: none (Envoy in plaintext)",
    )

    def problems(self) -> list[str]:
        found = super().problems()
        if not self.cluster_names:
            found.append("clusters must name at least one service")
        if self.envoy_tls_dir is not None and not self.envoy_tls_dir.is_dir():
            found.append(f"envoy_tls_dir {self.envoy_tls_dir} is not a directory")
        if not is_host_port(self.watch_consul_http):
            found.append(f"watch_consul_http must be host:port, got {self.watch_consul_http!r}")
        return found

    @property
    def cluster_names(self) -> list[str]:
        return [c.strip() for c in self.clusters.split(",") if c.strip()]
