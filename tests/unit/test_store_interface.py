"""The store interface on SQLite (services/common/database.py, db.py's SqliteDatabase):
a store's async transactions run to their end on the thread they are given, one that
suspends is refused and undone, writes leave the event loop's thread unless group commit
is off, and the times the stores write and compare come from the database's clock."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import threading

import pytest

from services.common import db
from services.common.database import Tx
from services.order.domain import Lease, LineItem
from services.order.store import OrderStore

SCHEMA = "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"

pytestmark = pytest.mark.sqlite_only(
    "SqliteDatabase itself: coroutines run to their end on the writer thread, and SqliteTx's clock"
)


class Pairs(db.Store):
    """A store of no service: it makes its one table itself."""

    def __init__(self, path: pathlib.Path, group_commit: bool = True) -> None:
        super().__init__(path, group_commit=group_commit)
        self._conn.execute(SCHEMA)


def stored(path: pathlib.Path) -> dict[str, int]:
    with sqlite3.connect(path) as other:
        return dict(other.execute("SELECT k, v FROM kv").fetchall())


async def put(tx: Tx, key: str, value: int) -> int:
    return await tx.execute("INSERT INTO kv VALUES (?, ?)", (key, value))


async def test_a_write_that_suspends_is_refused_and_undone(tmp_path: pathlib.Path) -> None:
    store = Pairs(tmp_path / "kv.db")

    async def suspends(tx: Tx) -> None:
        await put(tx, "half", 1)
        await asyncio.sleep(0)  # a real suspension: it would need the loop to resume

    async def fine(tx: Tx) -> int:
        return await put(tx, "whole", 2)

    answers = await asyncio.gather(
        store.db.write(suspends), store.db.write(fine), return_exceptions=True
    )
    assert isinstance(answers[0], RuntimeError) and "suspends" in str(answers[0])
    assert answers[1] == 1  # the other write of the batch stands
    assert stored(tmp_path / "kv.db") == {"whole": 2}
    store.close()


async def test_a_read_that_suspends_is_refused(tmp_path: pathlib.Path) -> None:
    store = Pairs(tmp_path / "kv.db")

    async def suspends(tx: Tx) -> None:
        await tx.fetchall("SELECT * FROM kv")
        await asyncio.sleep(0)

    for snapshot in (False, True):
        with pytest.raises(RuntimeError, match="suspends"):
            await store.db.read(suspends, snapshot=snapshot)
    # The snapshot's read transaction ended: a commit made now is seen.
    assert await store.db.write(lambda tx: put(tx, "k", 1)) == 1
    row = await store.db.read(lambda tx: tx.fetchone("SELECT v FROM kv"))
    assert row is not None and row["v"] == 1
    store.close()


@pytest.mark.parametrize("group_commit", [True, False])
async def test_writes_leave_the_loop_thread_unless_group_commit_is_off(
    tmp_path: pathlib.Path, group_commit: bool
) -> None:
    """Off is the benchmark baseline's classic design: each write commits on the caller's
    thread."""
    store = Pairs(tmp_path / "kv.db", group_commit=group_commit)
    threads: list[int] = []

    async def write(tx: Tx) -> None:
        threads.append(threading.get_ident())
        await put(tx, "k", 1)

    await store.db.write(write)
    on_the_loop_thread = threads == [threading.get_ident()]
    assert on_the_loop_thread is not group_commit
    assert stored(tmp_path / "kv.db") == {"k": 1}
    store.close()


async def test_the_order_store_takes_its_times_from_the_database(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No caller passes a time: the order's times and its lease's expiry are `Tx.now()`'s,
    and expiry is compared with it, so a server database's clock can stand in for it."""
    clock = [5000.0]

    async def database_now(self: db.SqliteTx) -> float:
        return clock[0]

    monkeypatch.setattr(db.SqliteTx, "now", database_now)
    store = OrderStore(tmp_path / "order.db")
    order, _ = await store.create(
        "o1", "alice", "r1", (LineItem("SKU-TEA", 1),), lease=Lease("o1", "a", 1), lease_seconds=30
    )
    assert (order.created_at, order.updated_at) == (5000.0, 5000.0)
    assert await store.open_sagas() == []  # its lease holds until 5030
    assert await store.acquire("o1", "b", 30) is None
    clock[0] = 5030.0
    assert await store.open_sagas() == ["o1"]
    assert await store.acquire("o1", "b", 30) == Lease("o1", "b", 2)
    clock[0] = 5059.0
    assert await store.acquire("o1", "a", 30) is None  # b's holds until 5060
    store.close()
