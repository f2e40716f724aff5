"""Start-up settings and the error boundary: bad config fails clearly, no exception leaks
(a service started with it: tests/service/test_start_up.py)."""

from __future__ import annotations

import pathlib
import sqlite3
import sys

import grpc
import psycopg
import pytest

from services.common import migrations
from services.common.config import ConfigError, load
from services.common.server import startup_errors
from services.common.tls import TLSError
from services.common.validation import MAX_AUTHORIZATION_SECONDS, MAX_HOLD_SECONDS
from services.inventory.config import InventoryConfig
from services.inventory.service import create as create_inventory
from services.order.config import ANSWER_MARGIN_SECONDS, GATEWAY_TRY_TIMEOUT_SECONDS, OrderConfig
from services.payment.config import PaymentConfig
from shop.inventory.v1 import inventory_service_pb2 as rpc
from shop.inventory.v1.inventory_service_pb2_grpc import InventoryServiceStub
from tests.helpers import rejected, serving


def test_flags_override_environment_which_overrides_defaults() -> None:
    config = load(
        OrderConfig,
        ["--port", "7000"],
        {
            "SHOP_PORT": "6000",
            "SHOP_PAYMENT_TARGET": "10.0.0.1:1",
            "SHOP_CALL_TIMEOUT_SECONDS": "0.5",
        },
    )
    assert (config.port, config.payment_target, config.call_timeout_seconds) == (
        7000,
        "10.0.0.1:1",
        0.5,
    )
    assert config.inventory_target == "127.0.0.1:50051"


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        load(
            OrderConfig,
            ["--port", "70000", "--crash-at", "nowhere", "--log-level", "LOUD"],
            {"SHOP_CALL_TIMEOUT_SECONDS": "soon", "SHOP_HOLD_SECONDS": "-1"},
        )
    assert raised.value.problems == (
        "SHOP_CALL_TIMEOUT_SECONDS='soon' is not a valid call_timeout_seconds",
    )
    with pytest.raises(ConfigError) as raised:
        load(
            OrderConfig,
            ["--port", "70000", "--crash-at", "nowhere", "--log-level", "LOUD"],
            {"SHOP_HOLD_SECONDS": "-1"},
        )
    assert len(raised.value.problems) == 4
    assert any("port must be 0..65535" in p for p in raised.value.problems)


def test_the_order_service_refuses_what_inventory_or_envoy_would_defeat() -> None:
    # Inventory refuses a longer hold (every order would be cancelled), and Envoy retries
    # a CreateOrder still waiting at its per-try timeout.
    too_long = [str(MAX_HOLD_SECONDS + 1), str(GATEWAY_TRY_TIMEOUT_SECONDS)]
    with pytest.raises(ConfigError) as raised:
        load(OrderConfig, ["--hold-seconds", too_long[0], "--create-wait-seconds", too_long[1]])
    assert len(raised.value.problems) == 2, raised.value.problems
    hold, wait = raised.value.problems
    assert hold.startswith("hold_seconds must be 1..3600"), hold
    assert wait.startswith("create_wait_seconds must be at most 11.8"), wait
    # At the limits, it starts.
    longest = GATEWAY_TRY_TIMEOUT_SECONDS - ANSWER_MARGIN_SECONDS
    at_limits = ["--hold-seconds", str(MAX_HOLD_SECONDS), "--create-wait-seconds", str(longest)]
    config = load(OrderConfig, at_limits)
    assert (config.hold_seconds, config.create_wait_seconds) == (MAX_HOLD_SECONDS, longest)


def test_the_order_service_refuses_an_authorization_longer_than_payment_holds() -> None:
    # The saga asks payment to hold the money for hold + park_after + margin, so that it
    # cannot expire between the commit and the capture; payment holds it 7 days at most.
    longest_park = MAX_AUTHORIZATION_SECONDS - MAX_HOLD_SECONDS
    with pytest.raises(ConfigError) as raised:
        load(
            OrderConfig,
            [
                "--hold-seconds",
                str(MAX_HOLD_SECONDS),
                "--park-after-seconds",
                str(longest_park),
                "--authorization-margin-seconds",
                "1",
            ],
        )
    (problem,) = raised.value.problems
    assert problem == (
        "hold_seconds + park_after_seconds + authorization_margin_seconds must be at most"
        " 604800 (how long payment holds an authorization), got 3600 + 601200 + 1 = 604801"
    ), problem
    with pytest.raises(ConfigError) as raised:
        load(OrderConfig, ["--authorization-margin-seconds", "-1"])
    assert raised.value.problems == ("authorization_margin_seconds must be >= 0, got -1.0",)
    at_limit = load(
        OrderConfig,
        [
            *("--hold-seconds", str(MAX_HOLD_SECONDS), "--park-after-seconds", str(longest_park)),
            *("--authorization-margin-seconds", "0"),
        ],
    )
    assert at_limit.authorization_seconds == MAX_AUTHORIZATION_SECONDS
    default = OrderConfig()
    assert default.authorization_seconds == 900 + 3600 + 300


def test_payment_refuses_a_default_authorization_or_retention_out_of_range() -> None:
    with pytest.raises(ConfigError) as raised:
        load(
            PaymentConfig,
            ["--default-authorization-seconds", str(MAX_AUTHORIZATION_SECONDS + 1)],
            {"SHOP_RETENTION_SECONDS": "0", "SHOP_SWEEP_INTERVAL_SECONDS": "0"},
        )
    assert len(raised.value.problems) == 3, raised.value.problems
    assert raised.value.problems[0].startswith("default_authorization_seconds must be 1..604800")
    config = PaymentConfig()
    assert (config.default_authorization_seconds, config.retention_seconds) == (86400, 604800)


def explode(sku: str) -> None:
    raise RuntimeError("secret: /var/lib/shop/inventory.db is corrupt at page 7")


async def test_an_unexpected_exception_becomes_a_generic_internal(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await create_inventory(InventoryConfig(db_path=tmp_path / "inventory.db"))
    monkeypatch.setattr(service.store, "product", explode)  # the servicer's store
    async with serving(service) as served:
        stub = InventoryServiceStub(served.channel)
        error = await rejected(stub.GetProduct(rpc.GetProductRequest(sku="SKU-TEA")))
    assert (error.code, error.message, error.reason) == (
        grpc.StatusCode.INTERNAL,
        "internal error",
        "INTERNAL",
    )
    assert "secret" not in repr(error)
    assert "secret" in caplog.text  # the operator still sees it, in the log


def test_a_service_that_cannot_start_names_psycopgs_error_only_once_it_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start's clean exit (services.common.server.main) catches psycopg's errors, of
    the migrations on PostgreSQL, without importing psycopg in a process on SQLite."""
    assert psycopg.Error in startup_errors() and migrations.MigrationError in startup_errors()
    monkeypatch.delitem(sys.modules, "psycopg")
    assert startup_errors() == (OSError, sqlite3.Error, migrations.MigrationError, TLSError)


def test_plaintext_listens_on_loopback_only_and_mutual_tls_needs_its_directory(
    tmp_path: pathlib.Path,
) -> None:
    """Plaintext trusts whoever connects, so it never listens beyond this machine."""
    with pytest.raises(ConfigError) as raised:
        load(InventoryConfig, ["--host", "169.254.7.1"], {})
    assert raised.value.problems == (
        "host '169.254.7.1' is not a loopback address: plaintext trusts every caller that can"
        " connect, so it listens on loopback only (set tls_dir to serve mutual TLS on other"
        " addresses)",
    )
    with pytest.raises(ConfigError) as raised:
        load(
            InventoryConfig,
            ["--host", "169.254.7.1", "--tls-dir", str(tmp_path / "none")],
            {"SHOP_ALLOWED_CALLERS": "gateway,Order"},
        )
    assert raised.value.problems == (
        f"tls_dir {tmp_path / 'none'} is not a directory",
        "allowed_callers must be names ([a-z][a-z0-9-]{0,62}) separated by commas,"
        " got 'gateway,Order'",
    )
    for host in ("127.0.0.1", "::1", "localhost"):
        assert load(InventoryConfig, ["--host", host], {}).tls_files is None
    served = load(InventoryConfig, ["--host", "169.254.7.1", "--tls-dir", str(tmp_path)], {})
    assert served.tls_files is not None and served.tls_files.directory == tmp_path
