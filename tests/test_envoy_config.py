"""gateway/envoy.yaml as Envoy itself reads it: `envoy --mode validate`."""

from __future__ import annotations

import pathlib
import subprocess

from gateway.envoy_config import render, write
from services.order.config import GATEWAY_TRY_TIMEOUT_SECONDS
from shopmesh import tokens
from shopmesh.system import Settings, envoy_settings
from shopmesh.tools import tool


def test_the_rendered_gateway_config_is_valid(tmp_path: pathlib.Path) -> None:
    # Rendered as `shopmesh run` renders it, with the default ports.
    keys = tokens.ensure_keys(tmp_path / "jwt")
    config = write(envoy_settings(Settings(workdir=tmp_path), keys), tmp_path / "envoy.yaml")
    checked = subprocess.run(
        [tool("envoy"), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"configuration '{config}' OK" in checked.stdout + checked.stderr


def test_admin_and_internal_listener_bind_loopback_only(tmp_path: pathlib.Path) -> None:
    keys = tokens.ensure_keys(tmp_path / "jwt")
    text = render(envoy_settings(Settings(workdir=tmp_path), keys))
    assert "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 9901}}" in text
    assert "address: {socket_address: {address: 127.0.0.1, port_value: 15001}}" in text
    assert "${" not in text


def test_envoy_gives_create_order_the_time_the_order_service_plans_for(
    tmp_path: pathlib.Path,
) -> None:
    text = render(envoy_settings(Settings(workdir=tmp_path), tokens.ensure_keys(tmp_path / "jwt")))
    order_route = text[text.index("prefix: /shop.order.v1.OrderService/") :]
    order_route = order_route[: order_route.index("- match:")]
    assert f"per_try_timeout: {GATEWAY_TRY_TIMEOUT_SECONDS}s" in order_route
