"""A service started with bad settings, on a port in use or with an unusable certificate,
exits at once with a clear message; `--help` lists every setting."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys

from services.order.config import GATEWAY_TRY_TIMEOUT_SECONDS
from shopmesh import ca
from tests.helpers import run_command


def test_a_service_with_bad_config_exits_2_with_a_clear_message() -> None:
    started = run_command(
        [sys.executable, "-m", "services.payment", "--port", "-1", "--seed-file", "/no/such/file"],
        expect=2,
        timeout=30,
    )
    assert "payment: invalid configuration:" in started.stderr
    assert "port must be 0..65535, got -1" in started.stderr
    assert "seed_file /no/such/file does not exist" in started.stderr
    assert "Traceback" not in started.stderr


def test_an_order_service_whose_wait_envoy_would_retry_exits_2_saying_so(
    tmp_path: pathlib.Path,
) -> None:
    started = run_command(
        [
            *(sys.executable, "-m", "services.order", "--db-path", str(tmp_path / "order.db")),
            *("--create-wait-seconds", str(GATEWAY_TRY_TIMEOUT_SECONDS)),
        ],
        expect=2,
        timeout=30,
    )
    assert "create_wait_seconds must be at most 11.8" in started.stderr


def show_help(module: str) -> subprocess.CompletedProcess[str]:
    return run_command([sys.executable, "-m", module, "--help"], timeout=30)


def test_help_lists_every_setting_with_its_variable() -> None:
    shown = show_help("services.order")
    assert shown.stdout.startswith("usage: python -m services.order ")
    for name in ("--inventory-target", "SHOP_PAYMENT_TARGET", "--crash-at", "--db-synchronous"):
        assert name in shown.stdout


def test_the_control_plane_help_names_its_own_command() -> None:
    shown = show_help("gateway.controlplane")
    assert shown.stdout.startswith("usage: python -m gateway.controlplane ")
    for name in ("--watch-consul-http", "SHOP_CLUSTERS"):
        assert name in shown.stdout


def test_a_busy_port_fails_the_start_with_a_clear_message(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = run_command(
            [
                sys.executable,
                "-m",
                "services.inventory",
                "--port",
                str(port),
                "--db-path",
                str(tmp_path / "inventory.db"),
            ],
            expect=1,
            timeout=30,
        )
    assert (
        f"inventory cannot start: cannot listen on 127.0.0.1:{port} (is the port in use?)"
        in started.stderr
    )
    assert "Traceback" not in started.stderr


def test_a_service_whose_certificate_is_unusable_exits_1_saying_why(
    tmp_path: pathlib.Path,
) -> None:
    """A key that is not the certificate's (a renewal half done, or files mixed up)."""
    authority = ca.ensure_ca(tmp_path / "ca")
    ca.issue(authority, "inventory", tmp_path / "inventory")
    ca.issue(authority, "payment", tmp_path / "payment")
    (tmp_path / "inventory" / "key.pem").write_bytes(
        (tmp_path / "payment" / "key.pem").read_bytes()
    )
    started = run_command(
        [
            sys.executable,
            "-m",
            "services.inventory",
            "--tls-dir",
            str(tmp_path / "inventory"),
            "--db-path",
            str(tmp_path / "inventory.db"),
        ],
        expect=1,
        timeout=30,
    )
    assert (
        f"inventory cannot start: {tmp_path / 'inventory'}: key.pem is not cert.pem's key"
        in started.stderr
    )
    assert "Traceback" not in started.stderr


ENTRY_POINTS = (
    "services.order",
    "services.inventory",
    "services.payment",
    "services.notification",
    "services.reporting",
    "gateway.controlplane",
)
UNUSED_ON_SQLITE = ("aiohttp", "asyncpg", "psycopg")
"""Modules a process on SQLite with nats:// never uses: each costs its memory (5-47 MB;
docs/performance.md) in every process (services.common.lean, postgresql.connect)."""


LOADED = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(" ".join(name for name, module in sys.modules.items() if module is not None))
"""
"""Runs a `python -m` entry point with --help (it imports all it runs with, then exits)
and prints the modules loaded (a module marked absent, None, is not)."""


def test_a_process_on_sqlite_loads_neither_aiohttp_nor_the_postgresql_drivers() -> None:
    runs = {
        module: subprocess.Popen(
            [sys.executable, "-c", LOADED, module],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in ENTRY_POINTS
    }
    loaded: dict[str, list[str]] = {}
    for module, run in runs.items():
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err[-2000:]
        names = out.split()
        assert "nats" in names and "grpc" in names  # it ran the entry point's imports
        loaded[module] = sorted(n for n in names if n.split(".")[0] in UNUSED_ON_SQLITE)
    assert loaded == {module: [] for module in ENTRY_POINTS}
