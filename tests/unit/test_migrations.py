"""Schema migrations (services/common/migrations.py, services/*/migrations): a new database
gets exactly the tables and indexes the code made before migrations existed; a database
that code made, with data in it, is adopted with nothing lost or changed; a second start
applies nothing; a lock left behind is reported and can be removed."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import sqlite3

import pytest

from services.common import db, migrations
from services.inventory.store import InventoryStore
from services.order.domain import LineItem, OrderState
from services.order.store import OrderStore
from services.payment.domain import PaymentState
from services.payment.store import PaymentStore
from shopmesh import cli

BEFORE = pathlib.Path(__file__).parent / "fixtures" / "before_migrations"
STORES: dict[str, type[db.Store]] = {
    "order": OrderStore,
    "inventory": InventoryStore,
    "payment": PaymentStore,
}
SERVICES = sorted(STORES)

pytestmark = pytest.mark.sqlite_only(
    "SQLite's migrations: files made by the code before migrations, yoyo's lock in a SQLite file"
)


def schema(path: pathlib.Path) -> list[tuple[str, str, str, str | None]]:
    """Every table and index of the database but yoyo's, as SQLite keeps them."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            " WHERE name NOT LIKE '%yoyo%' ORDER BY name"
        ).fetchall()


def rows(path: pathlib.Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table but yoyo's (sqlite_sequence included), in rowid order."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '%yoyo%'"
            )
        ]
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}


def applies(path: pathlib.Path) -> list[str]:
    """The migrations yoyo's log says were applied to the database, in order."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [
            m
            for (m,) in conn.execute(
                "SELECT migration_id FROM _yoyo_log WHERE operation = 'apply' ORDER BY rowid"
            )
        ]


def made_by_the_old_schema(service: str, path: pathlib.Path) -> pathlib.Path:
    """A new database as the code before migrations made it: its schema in one write
    transaction (services/common/db.py's connect did exactly this)."""
    text = (BEFORE / f"{service}.schema.sql").read_text()
    with contextlib.closing(db.connect(path, db.SYNCHRONOUS)) as conn:
        conn.executescript(f"BEGIN IMMEDIATE;\n{text}\nCOMMIT;")
    return path


def every_migration(service: str) -> list[str]:
    return sorted(p.stem for p in migrations.folder(service).glob("*.sql"))


@pytest.mark.parametrize("service", SERVICES)
def test_the_first_migration_makes_exactly_the_tables_the_code_made_before(
    tmp_path: pathlib.Path, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_the_first = tmp_path / "migrations"
    only_the_first.mkdir()
    shutil.copy(migrations.folder(service) / "0001_initial.sql", only_the_first)
    monkeypatch.setattr(migrations, "folder", lambda *_: only_the_first)
    STORES[service](tmp_path / "new.db").close()
    assert applies(tmp_path / "new.db") == ["0001_initial"]
    assert schema(tmp_path / "new.db") == schema(
        made_by_the_old_schema(service, tmp_path / "old.db")
    )


def test_a_skipped_number_filled_in_later_is_applied(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Order's 0003_order_log came before a 0002 of another branch: a database that has
    0001 and 0003 applies the 0002 merged after them at its next start."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name in ("0001_initial.sql", "0003_order_log.sql"):
        shutil.copy(migrations.folder("order") / name, folder)
    monkeypatch.setattr(migrations, "folder", lambda *_: folder)
    path = tmp_path / "order.db"
    OrderStore(path).close()
    assert applies(path) == ["0001_initial", "0003_order_log"]
    (folder / "0002_later.sql").write_text("CREATE TABLE IF NOT EXISTS later (x INTEGER);\n")
    OrderStore(path).close()
    assert applies(path) == ["0001_initial", "0003_order_log", "0002_later"]
    assert [m.applied for m in migrations.status(path, "order")] == [True, True, True]


@pytest.mark.parametrize("service", SERVICES)
def test_a_new_database_and_one_made_before_migrations_end_up_alike(
    tmp_path: pathlib.Path, service: str
) -> None:
    """Whatever later migrations do, they must bring both kinds to the same tables."""
    STORES[service](tmp_path / "new.db").close()
    shutil.copy(BEFORE / f"{service}.db", tmp_path / "adopted.db")
    STORES[service](tmp_path / "adopted.db").close()
    assert schema(tmp_path / "new.db") == schema(tmp_path / "adopted.db")
    assert applies(tmp_path / "new.db") == every_migration(service)
    assert applies(tmp_path / "adopted.db") == every_migration(service)


@pytest.mark.parametrize("service", SERVICES)
def test_the_fixture_databases_were_made_with_the_old_schema(
    tmp_path: pathlib.Path, service: str
) -> None:
    """The two fixtures agree: the database the old code wrote rows into has exactly the
    tables of the old schema text, and no migration table."""
    assert schema(BEFORE / f"{service}.db") == schema(
        made_by_the_old_schema(service, tmp_path / "old.db")
    )
    assert not any("yoyo" in name for _, name, _, _ in schema(BEFORE / f"{service}.db"))


@pytest.mark.parametrize("service", SERVICES)
def test_a_database_made_before_migrations_is_adopted_with_every_row(
    tmp_path: pathlib.Path, service: str
) -> None:
    path = tmp_path / f"{service}.db"
    shutil.copy(BEFORE / f"{service}.db", path)
    before = rows(path)
    assert all(before.values()), "the fixture has a row in every table"
    STORES[service](path).close()
    after = rows(path)
    assert {table: after[table] for table in before} == before
    if service == "order":
        # The log starts after the orders already there, which have none (history.py
        # skips them).
        assert after["order_events"] == []
        last_seq = max(int(str(row[0])) for row in before["orders"])
        assert after["order_log_start"] == [(1, last_seq + 1)]
    # Tables of later migrations (the outbox's, the log's) start empty, but the record of
    # where the log starts.
    assert not any(
        found
        for table, found in after.items()
        if table not in before and table != "order_log_start"
    )
    assert [m.applied for m in migrations.status(path, service)] == [True] * len(
        every_migration(service)
    )


async def test_an_adopted_order_database_serves_its_orders_and_takes_new_ones(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "order.db"
    shutil.copy(BEFORE / "order.db", path)
    store = OrderStore(path)
    confirmed = await store.order("o-confirmed", "alice")
    assert confirmed.state is OrderState.CONFIRMED
    assert [(i.sku, i.quantity, i.price_minor) for i in confirmed.items] == [
        ("SKU-TEA", 2, 450),
        ("SKU-MUG", 1, 1299),
    ]
    assert confirmed.total_minor == 2199
    assert (await store.saga("o-open")).cancel_requested
    assert [p.order_id for p in await store.parked()] == ["o-parked"]
    # A repeat of an old request id answers the old order; a new one continues the sequence.
    again, created = await store.create(
        "o-again", "alice", "r-1", (LineItem("SKU-MUG", 1), LineItem("SKU-TEA", 2)), 2e9
    )
    assert (again.order_id, created) == ("o-confirmed", False)
    new, created = await store.create("o-new", "alice", "r-new", (LineItem("SKU-TEA", 1),), 2e9)
    assert created and new.seq == 5
    store.close()


async def test_adopted_inventory_and_payment_databases_keep_their_stock_and_money(
    tmp_path: pathlib.Path,
) -> None:
    for name in ("inventory", "payment"):
        shutil.copy(BEFORE / f"{name}.db", tmp_path / f"{name}.db")
    inventory = InventoryStore(tmp_path / "inventory.db")
    tea = await inventory.product("SKU-TEA")
    assert (tea.available, tea.held, tea.sold) == (96, 2, 2)
    assert (await inventory.reservation("o-held")).state.value == "HELD"
    inventory.close()
    payment = PaymentStore(tmp_path / "payment.db")
    alice = await payment.account("alice")
    assert (alice.available, alice.held) == (96_902, 900)
    assert (await payment.payment("o-authorized")).state is PaymentState.AUTHORIZED
    # Its expire time is the one it was given (1000 days), not one the migration made up.
    assert await payment.expire_due(1_764_000_009.0 + 999 * 86_400) == 0
    payment.close()


@pytest.mark.parametrize("service", SERVICES)
def test_a_second_start_applies_nothing_and_takes_no_lock(
    tmp_path: pathlib.Path, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / f"{service}.db"
    STORES[service](path).close()

    def lock(*args: object) -> None:
        raise AssertionError("took the migration lock with nothing pending")

    monkeypatch.setattr(migrations._SQLiteBackend, "lock", lock)
    assert migrations.apply(path, service) == []
    STORES[service](path).close()
    assert applies(path) == every_migration(service)


@pytest.mark.parametrize("service", SERVICES)
def test_a_migration_applied_again_changes_nothing(tmp_path: pathlib.Path, service: str) -> None:
    """yoyo applies a migration and records it in two transactions: a process killed in
    between applies it again at its next start, which must neither fail nor change data."""
    path = tmp_path / f"{service}.db"
    shutil.copy(BEFORE / f"{service}.db", path)
    STORES[service](path).close()
    before = rows(path), schema(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("DELETE FROM _yoyo_migration")
        conn.commit()
    assert migrations.apply(path, service) == every_migration(service)
    assert (rows(path), schema(path)) == before


def test_a_lock_left_behind_fails_the_start_and_says_how_to_remove_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "order.db"
    made_by_the_old_schema("order", path)
    migrations.status(path, "order")  # creates yoyo's tables, as a first start would
    with contextlib.closing(sqlite3.connect(path)) as conn:
        # The row a process killed while migrating leaves.
        conn.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, '', 999999)")
        conn.commit()
    monkeypatch.setattr(migrations, "LOCK_TIMEOUT_SECONDS", 0.6)
    with pytest.raises(migrations.MigrationError) as refused:
        OrderStore(path)
    assert "999999" in str(refused.value) and "--break-lock" in str(refused.value)
    assert cli.main(["migrate", "--service", "order", "--db", str(path), "--break-lock"]) == 0
    OrderStore(path).close()
    assert applies(path) == every_migration("order")


def test_the_migrate_command_applies_and_lists(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "var" / "payment.db"
    argv = ["migrate", "--service", "payment", "--db", str(path)]
    assert cli.main([*argv, "--list"]) == 2  # no database yet: nothing to list
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--list"]) == 0
    ids = every_migration("payment")
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: applied {', '.join(ids)}",
        f"{path}: up to date",
        *(f"applied  {i}" for i in ids),
    ]
    assert applies(path) == every_migration("payment")


def test_listing_shows_what_an_old_database_lacks(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "payment.db"
    shutil.copy(BEFORE / "payment.db", path)
    assert cli.main(["migrate", "--service", "payment", "--db", str(path), "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"pending  {i}" for i in every_migration("payment")
    ]
    assert rows(path) == rows(BEFORE / "payment.db")


def test_a_migration_transaction_takes_the_write_lock_when_it_begins(
    tmp_path: pathlib.Path,
) -> None:
    """So it waits for other writers up front, instead of failing when its first write
    comes after a read while another instance holds the lock (see _SQLiteBackend)."""
    path = tmp_path / "order.db"
    OrderStore(path).close()
    with (
        migrations._backend(path) as backend,
        contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as other,
        backend.transaction(),
    ):
        backend.execute("SELECT COUNT(*) FROM orders").fetchall()  # a read, no write yet
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
