"""Saga ownership by lease, on one database with two stores (as two order instances
have): one owner at a time, adoption only of an expired lease, fencing of a stale owner's
writes, and a runner that stops driving a saga whose lease it lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from services.common.errors import ErrorKind, ServiceError
from services.order.config import OrderConfig
from services.order.domain import Lease, LeaseLost, LineItem, Order, Phase
from services.order.saga import SagaRunner, SagaSettings, StepError
from services.order.store import OrderStore
from tests.stores import StoreOpener

ITEMS = (LineItem("SKU-TEA", 1),)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Polls `condition` for up to 10 s without blocking the loop the runner works on."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_lease_is_adopted_only_once_expired_and_the_old_owner_is_fenced(
    open_store: StoreOpener,
) -> None:
    a, b = await open_store(OrderStore), await open_store(OrderStore)
    first = Lease("o1", "a", 1)
    await a.create("o1", "alice", "r1", ITEMS, 0.0, lease=first, lease_seconds=100.0)
    assert await b.acquire("o1", "b", 100.0, now=99.0) is None  # a still holds it
    assert await b.open_sagas(now=99.0) == []  # so nobody looks for it

    adopted = await b.acquire("o1", "b", 100.0, now=100.0)  # expired: b takes it over
    assert adopted == Lease("o1", "b", 2)
    with pytest.raises(LeaseLost):  # a, waking up, can no longer write...
        await a.record_reserved(first, ITEMS, "", 101.0)
    assert not await a.renew(first, 300.0, now=0.0)  # ...nor extend its lease
    assert (await a.saga("o1")).phase is Phase.STARTED  # nothing it tried was written
    assert await b.record_reserved(adopted, ITEMS, "", 102.0)
    assert await a.lease("o1") == adopted

    await b.release([adopted])  # b stops: the saga is free at once, for a higher epoch
    assert await b.open_sagas(now=103.0) == ["o1"]
    assert await a.acquire("o1", "a", 100.0, now=103.0) == Lease("o1", "a", 3)


class PaymentDown:
    """Participants whose payment never answers: the saga retries authorize for ever."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def reserve(self, order: Order, hold_seconds: float) -> list[LineItem]:
        self.calls.append("reserve")
        return [LineItem(i.sku, i.quantity, 100, "USD") for i in order.items]

    async def authorize(self, order: Order) -> None:
        self.calls.append("authorize")
        raise StepError("payment", ServiceError(ErrorKind.UNAVAILABLE, "", "down"), True)

    async def commit(self, order: Order) -> None: ...
    async def capture(self, order: Order) -> None: ...
    async def void(self, order: Order) -> None: ...
    async def release(self, order: Order) -> None: ...


async def test_a_runner_that_loses_the_lease_makes_no_more_calls_for_that_saga(
    open_store: StoreOpener,
) -> None:
    """Runner A drives a saga while payment is down; the lease is taken from it (as an
    instance whose clock ran ahead would): its renewal finds out, and it stops calling."""
    store, thief = await open_store(OrderStore), await open_store(OrderStore)
    settings = SagaSettings.of(
        OrderConfig(
            step_retry_seconds=60, max_backoff_seconds=0.05, hold_seconds=60, lease_seconds=0.6
        )
    )
    participants = PaymentDown()
    runner = SagaRunner(store, participants, settings, owner="a")
    await store.create("o1", "alice", "r1", ITEMS, 0.0)
    task = runner.ensure("o1")
    await until(lambda: participants.calls.count("authorize") >= 3, "authorize retries")

    assert await thief.acquire("o1", "b", 1e12, now=1e12) == Lease("o1", "b", 2)
    await asyncio.wait_for(task, 5)  # the runner gave the saga up by itself
    calls = len(participants.calls)
    await asyncio.sleep(0.5)  # several of its backoffs: no call comes after
    assert len(participants.calls) == calls
    assert await store.lease("o1") == Lease("o1", "b", 2)
    await runner.stop()


async def test_a_runner_drives_at_most_max_active_sagas_at_once(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    settings = SagaSettings.of(
        OrderConfig(
            step_retry_seconds=60, max_backoff_seconds=0.05, hold_seconds=60, max_active_sagas=2
        )
    )
    participants = PaymentDown()
    runner = SagaRunner(store, participants, settings, owner="a")
    for n in range(5):
        await store.create(f"o{n}", "alice", f"r{n}", ITEMS, 0.0)
    assert await runner.adopt() == 2  # no more than it has slots for
    await until(lambda: participants.calls.count("authorize") >= 6, "authorize retries")
    assert participants.calls.count("reserve") == 2  # the two it drives, no others
    assert len(await store.open_sagas(now=0.0)) == 3  # left for other instances
    await runner.stop()
    assert len(await store.open_sagas(now=0.0)) == 5  # given back at stop


async def test_four_instances_adopting_one_expired_saga_at_once_take_it_once(
    open_store: StoreOpener,
) -> None:
    stores = [await open_store(OrderStore) for _ in range(4)]
    await stores[0].create("o1", "alice", "r1", ITEMS, 0.0, lease=Lease("o1", "x", 1))
    for attempt in range(5):  # five rounds of four adopters: one lease a round
        now = 100.0 * (attempt + 1)
        leases = await asyncio.gather(
            *(s.acquire("o1", f"i{n}", 50.0, now=now) for n, s in enumerate(stores))
        )
        won = [lease for lease in leases if lease is not None]
        assert len(won) == 1, leases
        assert won[0].epoch == attempt + 2
        assert await stores[1].lease("o1") == won[0]
