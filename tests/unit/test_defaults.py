"""Every default has one source, a typed settings object, and the command lines are derived
from it: each field is a flag whose default and help text are the field's, and nothing
retypes a default another object already has. In-process: no process is started."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import pytest

from gateway.controlplane.config import ControlPlaneConfig
from gateway.envoy_config import Limits
from services.common.config import ENV_PREFIX, ServerConfig, load
from services.inventory.config import InventoryConfig
from services.inventory.domain import DEFAULT_HOLD_SECONDS
from services.order.config import OrderConfig
from services.order.saga import SagaSettings
from services.payment.config import PaymentConfig
from shopmesh import cli, postgres, system, tokens
from shopmesh.tools import REPO, WORKDIR

SERVICE_CONFIGS = [OrderConfig, InventoryConfig, PaymentConfig, ControlPlaneConfig]


def squeezed(text: str) -> str:
    """`text` without whitespace: argparse wraps help lines wherever it likes."""
    return "".join(text.split())


@pytest.mark.parametrize("config", SERVICE_CONFIGS, ids=lambda c: c.__name__)
def test_each_service_setting_is_a_flag_showing_its_default(
    config: type[ServerConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    assert load(config, [], {}) == config()
    with pytest.raises(SystemExit):
        load(config, ["--help"], {})
    shown = squeezed(capsys.readouterr().out)
    for field in dataclasses.fields(config):
        default = "unset" if field.default in (None, "") else str(field.default)
        flag = "--" + field.name.replace("_", "-")
        expected = (
            f"{field.metadata['help']} [env {ENV_PREFIX}{field.name.upper()}, default: {default}]"
        )
        assert squeezed(flag) in shown, flag
        assert squeezed(expected) in shown, f"{flag}'s help does not show its default"


def run_flags() -> dict[str, argparse.Action]:
    """`shopmesh run`'s flags, by the name they are stored under."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action for action in commands.choices["run"]._actions}


def test_shopmesh_run_flags_take_default_and_help_from_ports_and_settings() -> None:
    flags = run_flags()
    derived = [
        *(
            (f, f"{f.metadata['help']} [{f.default or 'a free port'}]")
            for f in dataclasses.fields(system.Ports)
        ),
        *(
            (f, f"{f.metadata['help']} [{f.default}]")
            for f in dataclasses.fields(system.Settings)
            if f.name in cli.RUN_FLAGS
        ),
    ]
    for field, help_text in derived:
        assert flags[field.name].default == field.default, field.name
        assert flags[field.name].help == help_text, field.name
    # Every Settings field with a help text has its flag.
    helped = {f.name for f in dataclasses.fields(system.Settings) if "help" in f.metadata}
    assert helped == set(cli.RUN_FLAGS)
    args = cli.build_parser().parse_args(["run"])
    assert cli.run_settings(args) == dataclasses.replace(
        system.Settings(), keys_dir=tokens.DEFAULT_KEYS_DIR, envoy_limits=Limits()
    )


def test_the_control_plane_defaults_are_the_ports_shopmesh_run_uses() -> None:
    ports, config = system.Ports(), ControlPlaneConfig()
    assert config.port == ports.xds
    assert config.watch_consul_http == f"127.0.0.1:{ports.consul_http}"


def test_the_saga_runs_on_the_order_services_settings() -> None:
    config = OrderConfig()
    settings = SagaSettings.of(config)
    for field in dataclasses.fields(SagaSettings):
        assert getattr(settings, field.name) == getattr(config, field.name), field.name
    # The saga holds stock as long as inventory does for a caller that names no duration.
    assert config.hold_seconds == DEFAULT_HOLD_SECONDS


def test_the_commands_find_the_dev_keys_and_work_directory_from_any_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert tokens.DEFAULT_KEYS_DIR == REPO / "var" / "jwt" == WORKDIR / "jwt"
    assert tokens.issue("alice").count(".") == 2  # a JWT, signed with the repository's key
    assert cli.main(["keys"]) == 0
    assert f"JWKS {REPO / 'var' / 'jwt' / 'jwks.json'} " in capsys.readouterr().out
    assert system.Settings().workdir == REPO / "var"
    assert list(tmp_path.iterdir()) == [], "a default path was taken relative to the cwd"


def test_shopmesh_postgres_flags_take_default_and_help_from_its_settings() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {action.dest: action for action in commands.choices["postgres"]._actions}
    port = next(f for f in dataclasses.fields(postgres.Settings) if f.name == "port")
    assert flags["port"].default == port.default == 0
    assert flags["port"].help == f"{port.metadata['help']} [a free port]"
    args = parser.parse_args(["postgres"])
    assert (args.workdir, args.port) == (WORKDIR, postgres.Settings().port)
