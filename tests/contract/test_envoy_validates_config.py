"""gateway/envoy.yaml as Envoy itself reads it: `envoy --mode validate`."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from gateway.envoy_config import UNTHROTTLED, Limits, write
from shopmesh import tokens
from shopmesh.system import Settings, envoy_settings
from shopmesh.tools import tool
from tests.helpers import run_command


@pytest.mark.parametrize(
    "limits",
    [
        Limits(),
        UNTHROTTLED,
        Limits(user_orders_per_second=0.01, user_requests_per_second=2.5, max_users_tracked=1),
    ],
    ids=["defaults", "unthrottled", "slow refills"],
)
def test_the_rendered_gateway_config_is_valid(tmp_path: pathlib.Path, limits: Limits) -> None:
    # Rendered as `shopmesh run` renders it, with the default ports.
    keys = tokens.ensure_keys(tmp_path / "jwt")
    settings = Settings(workdir=tmp_path, envoy_limits=limits)
    config = write(envoy_settings(settings, keys), tmp_path / "envoy.yaml")
    checked = run_command(
        [tool("envoy"), "--mode", "validate", "-c", str(config), "--disable-hot-restart"]
    )
    assert f"configuration '{config}' OK" in checked.stdout + checked.stderr


def test_the_mutual_tls_config_is_valid(tmp_path: pathlib.Path) -> None:
    """The plaintext config with gateway/mutual_tls.py's TLS, SDS and RBAC added, its
    internal listener on a host's address."""
    keys = tokens.ensure_keys(tmp_path / "jwt")
    plain = envoy_settings(Settings(workdir=tmp_path), keys)
    settings = dataclasses.replace(plain, mutual_tls=True, internal_address="169.254.7.1")
    config = write(settings, tmp_path / "envoy.yaml")
    checked = run_command(
        [tool("envoy"), "--mode", "validate", "-c", str(config), "--disable-hot-restart"]
    )
    assert f"configuration '{config}' OK" in checked.stdout + checked.stderr


def test_a_plaintext_internal_listener_stays_on_loopback(tmp_path: pathlib.Path) -> None:
    plain = envoy_settings(Settings(workdir=tmp_path), tokens.ensure_keys(tmp_path / "jwt"))
    with pytest.raises(ValueError, match="only under mutual TLS"):
        dataclasses.replace(plain, internal_address="169.254.7.1")
