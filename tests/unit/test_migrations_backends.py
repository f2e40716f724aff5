"""Schema migrations on the session's backend (services/common/migrations.py, each
service's migrations/<backend>/): a store opens with every migration applied, opening
again applies nothing and takes no lock, and a migration applied again (as after a
process killed between applying and recording it) fails nothing and changes nothing.
What is about SQLite files alone (old databases adopted, yoyo's lock row) is in
test_migrations.py."""

from __future__ import annotations

import pathlib

import pytest

from services.common import db, migrations
from services.inventory.store import InventoryStore
from services.notification.domain import Outcome
from services.notification.store import NotificationStore
from services.order.domain import Lease, LineItem, Phase
from services.order.store import OrderStore
from services.payment.store import PaymentStore
from tests.stores import StoreOpener, rows

STORES: dict[str, type[db.Store]] = {
    "order": OrderStore,
    "inventory": InventoryStore,
    "payment": PaymentStore,
    "notification": NotificationStore,
}
SERVICES = sorted(STORES)

SCHEMA = {
    "sqlite": ("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE '%yoyo%'",),
    "postgresql": (
        "SELECT table_name, column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name NOT LIKE '%yoyo%'",
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = current_schema() AND tablename NOT LIKE '%yoyo%'",
    ),
}
"""The queries whose rows are a database's tables, columns and indexes, on each backend."""
TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '%yoyo%'",
    "postgresql": "SELECT tablename FROM pg_tables"
    " WHERE schemaname = current_schema() AND tablename NOT LIKE '%yoyo%'",
}


def every_migration(service: str, backend: str) -> list[str]:
    return sorted(p.stem for p in migrations.folder(service, backend).glob("*.sql"))


async def schema(store: db.Store, backend: str) -> list[list[tuple[object, ...]]]:
    return [sorted(await rows(store, query), key=repr) for query in SCHEMA[backend]]


async def contents(store: db.Store, backend: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table but yoyo's."""
    tables = [str(name) for (name,) in await rows(store, TABLES[backend])]
    return {t: sorted(await rows(store, f"SELECT * FROM {t}"), key=repr) for t in tables}


async def with_a_row_or_more(store: db.Store, seed_file: pathlib.Path) -> None:
    if isinstance(store, OrderStore):
        lease = Lease("o1", "test", 1)
        await store.create("o1", "alice", "r1", (LineItem("SKU-TEA", 2),), 0.0, lease=lease)
        await store.park(lease, Phase.STARTED, "UNEXPECTED_ERROR", "a bug", 1.0)
    elif isinstance(store, InventoryStore):
        await store.seed(seed_file)
        await store.release("o1", "alice", 0.0)  # a tombstone
    elif isinstance(store, PaymentStore):
        await store.seed(seed_file)
        await store.authorize("o1", "alice", 100, "USD", now=0.0, authorization_seconds=60)
    elif isinstance(store, NotificationStore):
        await store.set_contact("alice", "alice@shopmesh.example", now=0.0)
        await store.record(Outcome("e1", "o1", "alice", "CONFIRMED", 100, "USD"), now=0.0)


@pytest.mark.parametrize("service", SERVICES)
async def test_a_store_opens_migrated_and_a_second_open_applies_nothing_and_takes_no_lock(
    open_store: StoreOpener, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await open_store(STORES[service])
    location = open_store.location(service)
    assert [m.id for m in migrations.status(location, service)] == every_migration(
        service, open_store.backend
    )
    assert all(m.applied for m in migrations.status(location, service))

    def lock(*args: object) -> None:
        raise AssertionError("took the migration lock with nothing pending")

    for backend_class in (migrations._SQLiteBackend, migrations._PostgresqlBackend):
        monkeypatch.setattr(backend_class, "lock", lock)
    assert migrations.apply(location, service) == []
    await open_store(STORES[service])  # another instance starting: applies nothing either


@pytest.mark.parametrize("service", SERVICES)
async def test_a_migration_applied_again_changes_nothing(
    open_store: StoreOpener, service: str, seed_file: pathlib.Path
) -> None:
    """yoyo applies a migration and records it in two transactions: a process killed in
    between applies it again at its next start, which must neither fail nor change data."""
    store = await open_store(STORES[service])
    backend = open_store.backend
    await with_a_row_or_more(store, seed_file)
    before = await contents(store, backend), await schema(store, backend)
    assert any(before[0].values()), "rows the migrations could disturb"
    await store.db.write(lambda tx: tx.execute("DELETE FROM _yoyo_migration"))
    location = open_store.location(service)
    assert migrations.apply(location, service) == every_migration(service, backend)
    assert (await contents(store, backend), await schema(store, backend)) == before
