"""`shopmesh run`'s flags reach the system's settings (starting it is tests/system/test_run.py's
and tests/system/test_readme.py's part)."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from gateway.envoy_config import Limits
from shopmesh import cli, system

# The flag of each of Ports' fields.
PORT_FLAGS = {
    "public": "--public-port",
    "internal": "--internal-port",
    "admin": "--admin-port",
    "xds": "--xds-port",
    "consul_http": "--consul-port",
    "consul_dns": "--consul-dns-port",
    "consul_server": "--consul-server-port",
    "consul_serf": "--consul-serf-port",
    "nats": "--nats-port",
    "nats_monitor": "--nats-monitor-port",
}


def test_run_flags_become_the_settings(tmp_path: pathlib.Path) -> None:
    args = cli.build_parser().parse_args(
        [
            "run",
            *("--instances", "2", "--workdir", str(tmp_path)),
            *("--public-port", "18080", "--internal-port", "15101", "--admin-port", "19901"),
            *("--xds-port", "18100", "--consul-port", "18500", "--envoy-concurrency", "2"),
            *("--consul-dns-port", "18600", "--consul-server-port", "18300"),
            *("--consul-serf-port", "18301"),
        ]
    )
    settings = cli.run_settings(args)
    assert (settings.instances, settings.workdir, settings.envoy_concurrency) == (2, tmp_path, 2)
    assert settings.ports == system.Ports(18080, 15101, 19901, 18100, 18500, 18600, 18300, 18301)


def test_every_port_has_a_flag_shown_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(PORT_FLAGS) == {f.name for f in dataclasses.fields(system.Ports)}
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    shown = capsys.readouterr().out
    for field, flag in PORT_FLAGS.items():
        assert flag in shown, f"{flag} is not in `shopmesh run --help`"
        args = cli.build_parser().parse_args(["run", flag, "12345"])
        assert getattr(cli.run_settings(args).ports, field) == 12345, flag


def test_run_defaults_are_the_documented_ones() -> None:
    settings = cli.run_settings(cli.build_parser().parse_args(["run"]))
    assert settings.ports == system.Ports()
    assert (settings.instances, settings.envoy_concurrency) == (1, 1)
    assert settings.envoy_limits == Limits()


def test_gateway_limits_are_flags(capsys: pytest.CaptureFixture[str]) -> None:
    flags = [
        "--gateway-limit",
        "user_orders_per_second=0.5",
        "--gateway-limit",
        "user_order_burst=3",
    ]
    settings = cli.run_settings(cli.build_parser().parse_args(["run", *flags]))
    assert settings.envoy_limits == dataclasses.replace(
        Limits(), user_orders_per_second=0.5, user_order_burst=3
    )
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    shown = capsys.readouterr().out
    for field in dataclasses.fields(Limits):
        assert field.name in shown, f"{field.name} is not in `shopmesh run --help`"


@pytest.mark.parametrize(
    ("flag", "complaint"),
    [
        ("max_user=3", "'max_user' is not a gateway limit"),
        ("user_order_burst=many", "user_order_burst wants a number"),
        ("user_order_burst=2.5", "user_order_burst wants a number"),
    ],
)
def test_a_bad_gateway_limit_is_refused(
    flag: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--gateway-limit", flag])
    assert complaint in capsys.readouterr().err


def test_a_gateway_limit_out_of_range_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--gateway-limit", "user_orders_per_second=0"]) == 2
    assert "must be positive: user_orders_per_second" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--instances", "--envoy-concurrency"])
def test_run_refuses_a_count_below_one(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", flag, "0"]) == 2
    assert f"{flag} must be at least 1" in capsys.readouterr().err
