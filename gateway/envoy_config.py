"""Renders gateway/envoy.yaml: fills in the ports, addresses, paths and limits.

Only what differs between `make run` and the tests is a ${NAME} placeholder, and one
policy value the order service must agree with (the OrderService route's per-try timeout);
the rest of the policy lives in the YAML. Rendering fails if a placeholder is left unfilled.
"""

from __future__ import annotations

import pathlib
import string
from dataclasses import asdict, dataclass, field

TEMPLATE = pathlib.Path(__file__).with_name("envoy.yaml")


@dataclass(frozen=True)
class Limits:
    """Circuit-breaker limits: the only Envoy policy a test or a deployment tunes."""

    # Of inventory and payment (the internal hop) ...
    max_connections: int = 1024
    max_pending_requests: int = 256
    max_requests: int = 512
    max_retries: int = 32
    # ... and of the order cluster (the public edge).
    edge_max_pending_requests: int = 256
    edge_max_requests: int = 512


@dataclass(frozen=True)
class EnvoySettings:
    """Everything the template leaves open: where Envoy listens and finds its files.
    shopmesh.system.envoy_settings fills it from the system's settings."""

    public_port: int
    internal_port: int
    admin_port: int
    xds_port: int
    public_address: str
    jwks_file: str
    descriptor_file: str
    jwt_issuer: str
    jwt_audience: str
    order_try_timeout_seconds: float
    """Per-try timeout of the OrderService route; CreateOrder's wait stays below it."""
    limits: Limits = field(default_factory=Limits)


def render(settings: EnvoySettings) -> str:
    fields = {**asdict(settings), **asdict(settings.limits)}
    del fields["limits"]
    values = {key.upper(): str(value) for key, value in fields.items()}
    return string.Template(TEMPLATE.read_text()).substitute(values)


def write(settings: EnvoySettings, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(settings))
    return path
