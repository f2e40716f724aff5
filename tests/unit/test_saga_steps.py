"""The saga's steps against scripted participants (no network): what it records and which
calls it makes, for the cases a live stack cannot time precisely."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.common.errors import ErrorKind, ServiceError
from services.order.config import OrderConfig
from services.order.domain import CANCELLED_BY_USER, Lease, LineItem, Order, OrderState, Phase
from services.order.saga import SagaRunner, SagaSettings, StepError
from services.order.store import OrderStore
from tests.stores import StoreOpener, query_plan, record_statements

SETTINGS = SagaSettings.of(
    OrderConfig(step_retry_seconds=1, max_backoff_seconds=0.1, hold_seconds=60)
)


def record_moves(store: OrderStore) -> list[tuple[Phase, Phase]]:
    """The phase moves the saga asks of `store.advance`, in order."""
    moves: list[tuple[Phase, Phase]] = []
    advance = store.advance

    async def recorded(lease: Lease, before: Phase, after: Phase, now: float | None = None) -> bool:
        moves.append((before, after))
        return await advance(lease, before, after, now)

    store.advance = recorded  # type: ignore[method-assign]
    return moves


class Scripted:
    """Participants that succeed (unless told the hold expires before its commit), log each
    call, price every unit at `price`, and may run a hook during authorize."""

    def __init__(self, price: int = 250, hold_expires: bool = False) -> None:
        self.calls: list[str] = []
        self.during_authorize: Callable[[Order], Awaitable[None]] | None = None
        self._price = price
        self._hold_expires = hold_expires

    async def reserve(self, order: Order, hold_seconds: float) -> list[LineItem]:
        self.calls.append("reserve")
        return [LineItem(i.sku, i.quantity, self._price, "USD") for i in order.items]

    async def authorize(self, order: Order) -> None:
        self.calls.append("authorize")
        if self.during_authorize is not None:
            await self.during_authorize(order)

    async def commit(self, order: Order) -> None:
        self.calls.append("commit")
        if self._hold_expires:
            expired = ServiceError(ErrorKind.FAILED_PRECONDITION, "RESERVATION_EXPIRED", "gone")
            raise StepError("inventory", expired, transient=False)

    async def capture(self, order: Order) -> None:
        self.calls.append("capture")

    async def void(self, order: Order) -> None:
        self.calls.append("void")

    async def release(self, order: Order) -> None:
        self.calls.append("release")


async def test_an_authorized_order_goes_to_the_pivot_in_one_write(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    participants = Scripted()
    phases: list[Phase] = []

    async def look(order: Order) -> None:
        phases.append((await store.saga(order.order_id)).phase)

    participants.during_authorize = look
    moves = record_moves(store)
    order, _ = await store.create("o1", "alice", "r1", (LineItem("SKU-TEA", 2),), 0.0)
    await SagaRunner(store, participants, SETTINGS).ensure(order.order_id)
    assert participants.calls == ["reserve", "authorize", "commit", "capture"]
    assert phases == [Phase.RESERVED]
    assert moves == [(Phase.RESERVED, Phase.COMMITTING)]
    assert (await store.order("o1")).state is OrderState.CONFIRMED


async def test_a_cancel_during_authorization_voids_instead_of_committing(
    open_store: StoreOpener,
) -> None:
    store = await open_store(OrderStore)
    participants = Scripted()

    async def user_cancels(order: Order) -> None:
        assert await store.request_cancel(order.order_id, 1.0)

    participants.during_authorize = user_cancels
    moves = record_moves(store)
    order, _ = await store.create("o1", "alice", "r1", (LineItem("SKU-TEA", 2),), 0.0)
    await SagaRunner(store, participants, SETTINGS).ensure(order.order_id)
    assert participants.calls == ["reserve", "authorize", "void", "release"]
    # The pivot was refused (a cancel was asked for), so AUTHORIZED was recorded instead.
    assert moves == [(Phase.RESERVED, Phase.COMMITTING), (Phase.RESERVED, Phase.AUTHORIZED)]
    final = await store.order("o1")
    assert (final.state, final.cancel_reason) == (OrderState.CANCELLED, CANCELLED_BY_USER)
    saga = await store.saga("o1")
    assert (saga.phase, saga.compensate_from) == (Phase.CANCELLED, Phase.AUTHORIZED)


async def test_a_free_order_makes_no_payment_call(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    for request_id, hold_expires, calls, state in (
        ("r1", False, ["reserve", "commit"], OrderState.CONFIRMED),
        # Cancelled from the pivot: the stock goes back, and there is nothing to void.
        ("r2", True, ["reserve", "commit", "release"], OrderState.CANCELLED),
    ):
        participants = Scripted(price=0, hold_expires=hold_expires)
        order, _ = await store.create(request_id, "alice", request_id, (LineItem("SKU-X", 2),), 0)
        await SagaRunner(store, participants, SETTINGS).ensure(order.order_id)
        assert participants.calls == calls
        final = await store.order(order.order_id)
        assert (final.state, final.total_minor) == (state, 0)


async def test_open_sagas_are_found_through_the_index_oldest_first(open_store: StoreOpener) -> None:
    store = await open_store(OrderStore)
    for n, at in enumerate((30.0, 10.0, 20.0, 40.0)):
        await store.create(f"o{n}", "alice", f"r{n}", (LineItem("SKU-TEA", 1),), at)
    leases = [await store.acquire(f"o{n}", "test", 50.0, now=0.0) for n in range(4)]
    assert all(leases)
    await store.record_reserved(Lease("o2", "test", 1), (LineItem("SKU-TEA", 1),), "", 20.0)
    await store.finish(Lease("o0", "test", 1), Phase.STARTED, 30.0)  # final: CANCELLED
    await store.renew(Lease("o3", "test", 1), 70.0, now=0.0)  # driven past 60
    statements = record_statements(store)
    # Open, with no live lease at 60: o1 (oldest) and o2; o0 is final, o3's lease holds.
    assert await store.open_sagas(now=60.0) == ["o1", "o2"]
    # Finished sagas pile up forever, so the query must not scan them all.
    (query,) = statements
    plan = await query_plan(store, open_store.backend, *query)
    scans = ("SCAN sagas", "Seq Scan on sagas")  # SQLite's words, PostgreSQL's
    assert not any(scan in plan for scan in scans) and "sagas_by_phase" in plan, plan
