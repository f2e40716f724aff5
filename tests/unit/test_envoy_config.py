"""gateway/envoy.yaml as rendered: where it listens, its timeouts and rate limits (Envoy
itself reads it in tests/contract/test_envoy_validates_config.py)."""

from __future__ import annotations

import pathlib

import pytest

from gateway.envoy_config import Limits, render, token_bucket
from services.order.config import GATEWAY_TRY_TIMEOUT_SECONDS
from shopmesh import tokens
from shopmesh.system import Settings, envoy_settings


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


@pytest.mark.parametrize(
    ("per_second", "bucket"),
    [
        (50.0, "{max_tokens: 9, tokens_per_fill: 50, fill_interval: 1.000s}"),
        (2.5, "{max_tokens: 9, tokens_per_fill: 2, fill_interval: 0.800s}"),
        (0.01, "{max_tokens: 9, tokens_per_fill: 1, fill_interval: 100.000s}"),
        (1e6, "{max_tokens: 9, tokens_per_fill: 1000000, fill_interval: 1.000s}"),
    ],
)
def test_a_rate_becomes_an_envoy_token_bucket(per_second: float, bucket: str) -> None:
    assert token_bucket(per_second, 9) == bucket


def test_the_default_lru_holds_every_user_a_refill_can_see() -> None:
    """A user pushed out of the LRU of users comes back with a full bucket: harmless only
    if it is full again anyway, so the LRU must outlast a refill at the listener's rate."""
    limits = Limits()
    assert limits.max_users_tracked > limits.users_admitted_while_refilling()


def test_limits_refuse_a_rate_or_burst_of_zero() -> None:
    with pytest.raises(
        ValueError, match="must be positive: user_orders_per_second, user_request_burst"
    ):
        Limits(user_orders_per_second=0, user_request_burst=0)
