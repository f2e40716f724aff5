"""`shopmesh run`'s flags reach the system's settings (starting it is tests/test_readme.py's
part: `make run` as the README shows it)."""

from __future__ import annotations

import pathlib

import pytest

from shopmesh import cli, system


def test_run_flags_become_the_settings(tmp_path: pathlib.Path) -> None:
    args = cli.build_parser().parse_args(
        [
            "run",
            *("--instances", "2", "--workdir", str(tmp_path)),
            *("--public-port", "18080", "--internal-port", "15101", "--admin-port", "19901"),
            *("--xds-port", "18100", "--consul-port", "18500", "--envoy-concurrency", "2"),
        ]
    )
    settings = cli.run_settings(args)
    assert (settings.instances, settings.workdir, settings.envoy_concurrency) == (2, tmp_path, 2)
    ports = settings.ports
    assert (ports.public, ports.internal, ports.admin, ports.xds, ports.consul_http) == (
        18080,
        15101,
        19901,
        18100,
        18500,
    )


def test_run_defaults_are_the_documented_ones() -> None:
    settings = cli.run_settings(cli.build_parser().parse_args(["run"]))
    assert settings.ports == system.Ports()
    assert (settings.instances, settings.envoy_concurrency) == (1, 1)


@pytest.mark.parametrize("flag", ["--instances", "--envoy-concurrency"])
def test_run_refuses_a_count_below_one(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", flag, "0"]) == 2
    assert f"{flag} must be at least 1" in capsys.readouterr().err
