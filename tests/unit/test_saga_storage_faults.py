"""The order's own database unavailable for a while (a PostgreSQL server restarting,
crash recovery included, takes seconds) is a transient fault for the saga, as a
participant's UNAVAILABLE is: the saga waits it out and drives the order on. Before, each
STORAGE_UNAVAILABLE counted as an unexpected error, and after `max_step_failures` of them
(a second or two of backoff) the saga was parked, its order PENDING until an operator
resumed it: tests/service/test_pg_faults.py's kill -9 under load found it."""

from __future__ import annotations

import asyncio
import pathlib

from services.common.errors import ErrorKind, ServiceError
from services.order.config import OrderConfig
from services.order.domain import LineItem, OrderState
from services.order.saga import SagaRunner, SagaSettings
from services.order.store import OrderStore
from tests.unit.test_saga_parking import BOUND_SECONDS, Refusing

SETTINGS = SagaSettings.of(
    OrderConfig(
        step_retry_seconds=1, max_backoff_seconds=0.05, hold_seconds=60, max_step_failures=3
    )
)
OUTAGE = 4 * SETTINGS.max_step_failures
"""Storage faults in a row: more than the unexpected errors that park a saga."""


async def test_the_orders_database_unavailable_for_a_while_is_waited_out(
    tmp_path: pathlib.Path,
) -> None:
    store = OrderStore(tmp_path / "order.db")
    order, _ = await store.create("o1", "alice", "r1", (LineItem("SKU-TEA", 1),), 0.0)
    failures = 0
    record_reserved = store.record_reserved

    async def unavailable_for_a_while(*args: object, **kwargs: object) -> bool:
        nonlocal failures
        if failures < OUTAGE:
            failures += 1
            raise ServiceError(
                ErrorKind.UNAVAILABLE, "STORAGE_UNAVAILABLE", "storage is unavailable"
            )
        return await record_reserved(*args, **kwargs)  # type: ignore[arg-type]

    store.record_reserved = unavailable_for_a_while  # type: ignore[method-assign]
    participants = Refusing({})
    runner = SagaRunner(store, participants, SETTINGS)
    await asyncio.wait_for(runner.ensure(order.order_id), BOUND_SECONDS)
    assert failures == OUTAGE
    assert await store.parked() == []
    assert (await store.order(order.order_id)).state is OrderState.CONFIRMED
    # The reservation repeated while the store was down: idempotent by order id.
    assert participants.calls.count("reserve") == OUTAGE + 1
    assert participants.calls.count("capture") == 1
