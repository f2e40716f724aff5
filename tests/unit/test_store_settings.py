"""Which database a store service opens: `--db-path` (SQLite, the default) or `--db-url`
(PostgreSQL) with `--db-password-file`, and every combination refused at start, each with
a message that says what to do."""

from __future__ import annotations

import os
import pathlib

import pytest

from services.common.config import ConfigError, load
from services.common.postgresql import PoolSettings
from services.inventory.config import InventoryConfig
from services.order.config import OrderConfig
from services.payment.config import PaymentConfig
from shopmesh import cli

URL = "postgresql://inventory@127.0.0.1:5432/inventory"


@pytest.fixture
def password_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "inventory.password"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write("s3cret\n")
    return path


def problems(*flags: str, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as raised:
        load(InventoryConfig, list(flags), environ or {})
    return raised.value.problems


@pytest.mark.parametrize("config", [InventoryConfig, PaymentConfig, OrderConfig])
def test_sqlite_at_the_services_own_path_unless_a_url_is_set(config: type[InventoryConfig]) -> None:
    loaded = load(config, [], {})
    assert loaded.db_url == "" and loaded.db_password_file is None
    assert loaded.db_location == pathlib.Path(f"var/{config.__name__[:-6].lower()}.db")
    assert load(config, ["--db-path", "x.db"], {}).db_location == pathlib.Path("x.db")


def test_a_url_with_a_password_file_chooses_postgresql(password_file: pathlib.Path) -> None:
    config = load(
        InventoryConfig,
        ["--db-path", "ignored.db", "--db-password-file", str(password_file)],
        {"SHOP_DB_URL": URL},
    )
    assert config.db_location == URL  # the URL wins over a path
    assert config.db_password_file == password_file


def test_a_password_in_the_url_is_refused_and_not_repeated(password_file: pathlib.Path) -> None:
    for url in (
        "postgresql://inventory:hunter2@127.0.0.1:5432/inventory",
        "postgresql://inventory@127.0.0.1:5432/inventory?password=hunter2",
    ):
        found = problems("--db-url", url, "--db-password-file", str(password_file))
        assert len(found) == 1, found
        assert "must not contain a password" in found[0] and "`ps`" in found[0]
        assert "hunter2" not in found[0]
    found = problems("--db-url", "mysql://inventory:hunter2@127.0.0.1/inventory")
    assert found[0].startswith("db_url must be a PostgreSQL URL"), found
    assert "hunter2" not in " ".join(found)


def test_a_url_needs_a_password_file() -> None:
    assert problems("--db-url", URL) == (
        "db_url needs db_password_file: the file holding its role's password",
    )


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_password_file_others_may_read_is_refused(password_file: pathlib.Path, mode: int) -> None:
    password_file.chmod(mode)
    (found,) = problems("--db-url", URL, "--db-password-file", str(password_file))
    assert f"open to group or others (mode {mode:o})" in found
    assert f"chmod 600 {password_file}" in found


def test_a_missing_empty_or_not_a_file_password_file_is_refused(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing.password"
    (found,) = problems("--db-url", URL, "--db-password-file", str(missing))
    assert found == f"db_password_file {missing} cannot be read: No such file or directory"
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    (found,) = problems("--db-url", URL, "--db-password-file", str(folder))
    assert found == f"db_password_file {folder} is not a file"
    empty = tmp_path / "empty.password"
    empty.touch(mode=0o600)
    (found,) = problems("--db-url", URL, "--db-password-file", str(empty))
    assert found == f"db_password_file {empty} is empty"


def test_a_password_file_without_a_url_is_refused(password_file: pathlib.Path) -> None:
    assert problems("--db-password-file", str(password_file)) == (
        "db_password_file is only for db_url (a PostgreSQL database); SQLite needs none",
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("var/inventory.db", "db_url must be a PostgreSQL URL"),
        ("sqlite:///var/inventory.db", "db_url must be a PostgreSQL URL"),
        ("mysql://inventory@127.0.0.1/inventory", "db_url must be a PostgreSQL URL"),
        ("postgresql://127.0.0.1:5432/inventory", "db_url must name the role"),
        ("postgresql://inventory@:5432/inventory", "db_url must name the server's host"),
        ("postgresql://inventory@127.0.0.1:5432", "db_url must name the database"),
        ("postgresql://inventory@127.0.0.1:5432/", "db_url must name the database"),
        ("postgresql://inventory@127.0.0.1:port/inventory", "db_url's port must be a number"),
        ("postgresql://inventory@127.0.0.1:0/inventory", "db_url's port must be a number"),
        ("postgresql://inventory@127.0.0.1:70000/inventory", "db_url's port must be a number"),
    ],
)
def test_a_url_that_names_no_postgresql_database_is_refused(
    password_file: pathlib.Path, url: str, expected: str
) -> None:
    (found,) = problems("--db-url", url, "--db-password-file", str(password_file))
    assert found.startswith(expected), found


def test_every_database_problem_is_listed_with_the_others(tmp_path: pathlib.Path) -> None:
    found = problems(
        "--db-url",
        "postgresql://@127.0.0.1:5432/",
        "--db-password-file",
        str(tmp_path / "none"),
        "--port",
        "70000",
    )
    assert len(found) == 4, found


def test_the_pool_settings_reach_the_store_and_are_checked() -> None:
    config = load(
        OrderConfig,
        ["--db-pool-size", "4", "--db-lock-timeout-ms", "250"],
        {"SHOP_DB_ACQUIRE_TIMEOUT_SECONDS": "1.5", "SHOP_DB_STATEMENT_TIMEOUT_MS": "900"},
    )
    assert config.db_pool == PoolSettings(
        size=4, acquire_timeout_seconds=1.5, lock_timeout_ms=250, statement_timeout_ms=900
    )
    assert load(OrderConfig, [], {}).db_pool == PoolSettings()  # one set of defaults
    found = problems("--db-pool-size", "0", "--db-statement-timeout-ms", "-1")
    assert found == (
        "db_pool_size must be > 0, got 0",
        "db_statement_timeout_ms must be > 0, got -1",
    )


def test_migrate_refuses_a_password_in_the_url_before_connecting(
    capsys: pytest.CaptureFixture[str], password_file: pathlib.Path
) -> None:
    url = "postgresql://order:hunter2@127.0.0.1:1/order"
    assert cli.main(["migrate", "--service", "order", "--db", url]) == 2
    err = capsys.readouterr().err
    assert "--db must not contain a password" in err and "hunter2" not in err
    password_file.chmod(0o644)
    assert (
        cli.main(
            ["migrate", "--service", "order", "--db", URL, "--db-password-file", str(password_file)]
        )
        == 2
    )
    assert "open to group or others (mode 644)" in capsys.readouterr().err
    sqlite = ["--db", str(password_file.with_name("order.db"))]
    flags = ["migrate", "--service", "order", *sqlite, "--db-password-file", str(password_file)]
    assert cli.main(flags) == 2
    assert "--db-password-file is only for a PostgreSQL --db URL" in capsys.readouterr().err
