"""The order store's reads of one order take one statement each, on either backend (`pytest
--backend postgresql` for the server): on a server database every statement is a round
trip, and the saga reads its order before every step. They still answer whole orders."""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import pytest

from services.common.database import Database, Row, Tx
from services.common.errors import ErrorKind, ServiceError
from services.order.domain import Lease, LineItem, Phase
from services.order.store import OrderStore
from shopmesh.postgres import Cluster

T = TypeVar("T")
NAMES = itertools.count(1)


class CountingTx:
    """A Tx that counts the statements run through it."""

    for_share = ""
    skip_locked = ""

    def __init__(self, tx: Tx, counts: list[int]) -> None:
        self._tx = tx
        self._counts = counts
        self.for_share = tx.for_share
        self.skip_locked = tx.skip_locked

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        self._counts[-1] += 1
        return await self._tx.execute(sql, params)

    async def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        self._counts[-1] += 1
        await self._tx.executemany(sql, params)

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        self._counts[-1] += 1
        return await self._tx.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        self._counts[-1] += 1
        return await self._tx.fetchall(sql, params)

    async def now(self) -> float:
        self._counts[-1] += 1
        return await self._tx.now()

    async def lock(self, key: str) -> None:
        self._counts[-1] += 1
        await self._tx.lock(key)


class CountingDatabase:
    """The store's Database, recording each read: (snapshot, statements)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.reads: list[tuple[bool, int]] = []

    async def read(self, fn: Callable[[Tx], Awaitable[T]], *, snapshot: bool = False) -> T:
        counts = [0]
        result = await self._db.read(lambda tx: fn(CountingTx(tx, counts)), snapshot=snapshot)
        self.reads.append((snapshot, counts[0]))
        return result

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        return await self._db.write(fn)

    async def close(self) -> None:
        await self._db.close()


@pytest.fixture
async def store(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[OrderStore]:
    if backend == "postgresql":
        cluster: Cluster = request.getfixturevalue("session_cluster")
        location: Any = cluster.ensure_database(f"order_reads_{next(NAMES)}")
    else:
        location = tmp_path / "order.db"
    opened = await OrderStore.open(location)
    yield opened
    await opened.aclose()


ITEMS = (LineItem("SKU-TEA", 2), LineItem("SKU-MUG", 1), LineItem("SKU-CUP", 3))


async def test_an_order_is_read_whole_in_one_statement(store: OrderStore) -> None:
    lease = Lease("o1", "me", 1)
    await store.create("o1", "alice", "r1", ITEMS, 1.0, lease=lease, lease_seconds=60)
    priced = [LineItem(i.sku, i.quantity, 100 * n, "EUR") for n, i in enumerate(ITEMS, 1)]
    assert await store.record_reserved(lease, priced, "EUR", 2.0)
    counted = CountingDatabase(store.db)
    store.db = counted

    order = await store.order("o1", "alice")
    answered = await store.answer("o1")

    # Before, each was a snapshot of two SELECTs (with the saga's, three): on PostgreSQL
    # BEGIN, the SELECTs and COMMIT, four or five round trips.
    assert counted.reads == [(False, 1), (False, 1)]
    for got in (order, answered):
        assert got.items == tuple(priced)  # every item, in the order they were given
        assert (got.total_minor, got.currency, got.user_id) == (1300, "EUR", "alice")


async def test_the_saga_and_its_order_are_read_in_one_statement(store: OrderStore) -> None:
    lease = Lease("o1", "me", 1)
    await store.create("o1", "alice", "r1", ITEMS, 1.0, lease=lease, lease_seconds=60)
    assert await store.record_reserved(lease, ITEMS, "", 2.0)
    assert await store.request_cancel("o1", 3.0)
    assert await store.park(lease, Phase.RESERVED, "UNEXPECTED_ERROR", "stuck")
    counted = CountingDatabase(store.db)
    store.db = counted

    saga, order = await store.saga_and_order("o1")

    assert counted.reads == [(False, 1)]  # the saga's driver read them in two
    assert saga == await store.saga("o1")
    assert (saga.phase, saga.cancel_requested, saga.parked) == (Phase.RESERVED, True, True)
    assert order == await store.order("o1")
    assert order.items == ITEMS
    with pytest.raises(ServiceError) as missing:
        await store.saga_and_order("o2")
    assert missing.value.reason == "ORDER_NOT_FOUND"


async def test_the_answer_of_an_order_the_saga_cancelled_is_its_failure(store: OrderStore) -> None:
    lease = Lease("o1", "me", 1)
    await store.create("o1", "alice", "r1", ITEMS[:1], 1.0, lease=lease, lease_seconds=60)
    failure = ServiceError(ErrorKind.FAILED_PRECONDITION, "OUT_OF_STOCK", "none left")
    assert await store.begin_compensation(lease, Phase.STARTED, failure, 2.0)
    assert await store.finish(lease, Phase.COMPENSATING, 3.0)

    with pytest.raises(ServiceError) as raised:
        await store.answer("o1")
    assert (raised.value.reason, raised.value.metadata["order_id"]) == ("OUT_OF_STOCK", "o1")
    with pytest.raises(ServiceError) as missing:
        await store.answer("o2")
    assert missing.value.reason == "ORDER_NOT_FOUND"
