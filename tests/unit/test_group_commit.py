"""Group commit (services/common/db.py): the writes of one event-loop turn share one COMMIT,
each caller hears its own answer only after that COMMIT, and one write's error or a storage
fault is handled as if every write had its own transaction."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3

import pytest

from services.common import db
from services.common.database import Tx
from services.common.errors import ErrorKind, ServiceError
from services.inventory.domain import Item
from services.inventory.store import InventoryStore
from shopmesh.seed import write_seed

SCHEMA = "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"

pytestmark = pytest.mark.sqlite_only(
    "group commit is SQLite's: one writer thread, savepoints under one COMMIT, its trace of COMMITs"
)


class Counter(db.Store):
    """A tiny store: one write, and the statements its write connection ran. It belongs
    to no service, so it makes its one table itself."""

    def __init__(self, path: pathlib.Path, group_commit: bool = True) -> None:
        super().__init__(path, group_commit=group_commit)
        self.conn = self._conn
        self.conn.execute(SCHEMA)
        self.statements: list[str] = []
        self.conn.set_trace_callback(self.statements.append)

    async def put(self, key: str, value: int) -> int:
        async def put(tx: Tx) -> int:
            await tx.execute("INSERT INTO kv VALUES (?, ?)", (key, value))
            if value < 0:
                raise ServiceError(ErrorKind.INVALID_ARGUMENT, "NEGATIVE", "no negatives")
            return value

        return await self.db.write(put)

    def commits(self) -> int:
        return sum(1 for s in self.statements if s == "COMMIT")


def stored(path: pathlib.Path) -> dict[str, int]:
    """What another connection (another process, say) sees committed."""
    with sqlite3.connect(path) as other:
        return dict(other.execute("SELECT k, v FROM kv").fetchall())


async def test_writes_of_one_turn_share_one_commit(tmp_path: pathlib.Path) -> None:
    store = Counter(tmp_path / "kv.db")
    answers = await asyncio.gather(*(store.put(f"k{n}", n) for n in range(10)))
    assert answers == list(range(10))
    assert store.commits() == 1
    assert stored(tmp_path / "kv.db") == {f"k{n}": n for n in range(10)}


async def test_without_group_commit_each_write_commits_alone(tmp_path: pathlib.Path) -> None:
    store = Counter(tmp_path / "kv.db", group_commit=False)
    await asyncio.gather(*(store.put(f"k{n}", n) for n in range(3)))
    assert store.commits() == 3


async def test_a_failing_write_undoes_only_itself(tmp_path: pathlib.Path) -> None:
    store = Counter(tmp_path / "kv.db")
    answers = await asyncio.gather(
        store.put("a", 1), store.put("bad", -1), store.put("c", 3), return_exceptions=True
    )
    assert answers[0] == 1 and answers[2] == 3
    assert isinstance(answers[1], ServiceError) and answers[1].reason == "NEGATIVE"
    assert stored(tmp_path / "kv.db") == {"a": 1, "c": 3}


async def test_a_storage_fault_fails_the_whole_batch(tmp_path: pathlib.Path) -> None:
    store = Counter(tmp_path / "kv.db")
    store.conn.execute("PRAGMA busy_timeout=50")
    # Another process holds the write lock past our busy timeout.
    blocker = sqlite3.connect(tmp_path / "kv.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        answers = await asyncio.gather(store.put("a", 1), store.put("b", 2), return_exceptions=True)
    finally:
        blocker.execute("ROLLBACK")
    assert all(isinstance(a, ServiceError) and a.reason == "STORAGE_UNAVAILABLE" for a in answers)
    assert stored(tmp_path / "kv.db") == {}
    assert await store.put("a", 1) == 1  # and the store works again afterwards


async def test_buyers_of_the_last_unit_in_one_batch_never_oversell(tmp_path: pathlib.Path) -> None:
    store = InventoryStore(tmp_path / "inventory.db")
    await store.seed(write_seed(tmp_path / "seed.json", {"SKU-LAST": (100, 1)}, {}))
    answers = await asyncio.gather(
        *(
            store.reserve(f"order-{n}", f"user-{n}", [Item("SKU-LAST", 1)], 60, 0.0)
            for n in range(5)
        ),
        return_exceptions=True,
    )
    refused = [a for a in answers if isinstance(a, ServiceError)]
    assert len(refused) == 4 and {a.reason for a in refused} == {"OUT_OF_STOCK"}
    product = await store.product("SKU-LAST")
    assert (product.available, product.held, product.sold) == (0, 1, 0)


async def test_no_caller_waits_forever_when_the_batch_cannot_run(tmp_path: pathlib.Path) -> None:
    store = Counter(tmp_path / "kv.db")
    store.writes.close()  # the writer thread is gone, as at shutdown
    answers = await asyncio.wait_for(
        asyncio.gather(store.put("a", 1), store.put("b", 2), return_exceptions=True), 5
    )
    assert all(isinstance(a, RuntimeError) for a in answers), answers


async def test_a_batch_sqlite_rolls_back_by_itself_fails_whole(tmp_path: pathlib.Path) -> None:
    store = Counter(tmp_path / "kv.db")
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count={pages + 2}")  # the disk is nearly full
    answers = await asyncio.gather(
        store.put("a", 1), store.put("b" * 50_000, 2), store.put("c", 3), return_exceptions=True
    )
    # Nothing may be stored behind the back of a caller told the write failed, and no
    # caller may be told "done" for a write that is not there.
    assert all(isinstance(a, ServiceError) and a.reason == "STORAGE_UNAVAILABLE" for a in answers)
    assert stored(tmp_path / "kv.db") == {}


async def test_a_lone_write_waiting_for_the_lock_leaves_the_loop_running(
    tmp_path: pathlib.Path,
) -> None:
    """Another process holding the write lock (BEGIN IMMEDIATE) makes our write wait; the
    wait must be on the writer thread, or RPCs, sagas and health checks stop meanwhile."""
    store = Counter(tmp_path / "kv.db")
    loop = asyncio.get_running_loop()
    blocker = sqlite3.connect(tmp_path / "kv.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    # Released by the loop itself: if the write blocks the loop, the lock outlives it
    # until our busy timeout, and the write fails too.
    loop.call_later(1.0, blocker.execute, "ROLLBACK")
    gaps: list[float] = []

    async def tick() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    ticker = asyncio.create_task(tick())
    try:
        # return_exceptions: on a stalled loop the write fails too, but the stall is the news.
        (written,) = await asyncio.wait_for(
            asyncio.gather(store.put("a", 1), return_exceptions=True), 10
        )
    finally:
        ticker.cancel()
        blocker.close()
    longest = max(gaps, default=0.0)
    assert longest < 0.3, f"the event loop stood still for {longest:.2f}s"
    assert written == 1
    assert stored(tmp_path / "kv.db") == {"a": 1}
