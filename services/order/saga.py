"""The order saga's orchestrator: drives each order from its saga record to a final state.

The record in the order database is the truth; this code only reads it, makes the next
call, and records the outcome. So a process that dies anywhere loses nothing: on start-up
(and periodically, for sagas another instance abandoned) `resume` drives every saga that
is not final from where its record says it is, repeating at most the one step in flight,
which every participant accepts again (idempotent by order id).

A free order (a total of 0) skips the payment steps: there is nothing to authorize,
capture or void (see `is_free`).

Before the pivot, transient failures are retried for `step_retry_seconds`, then the order
is cancelled; final failures cancel at once. From the pivot on, and while compensating, a
step cannot be given up (that would lose stock or money), but it is not retried for ever
in silence either: after `max_step_failures` final answers (a capture of a voided payment,
a release of a committed hold), after `park_after_seconds` of transient ones, or after
`max_step_failures` unexpected errors anywhere, the saga is parked: it stays as it is,
PENDING to its caller, is driven no more, is listed for operators, and is driven again
once an operator resumes it (`OrderStore.parked`, `unpark`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from services.common.errors import ErrorKind, FieldViolation, ServiceError
from services.order.domain import (
    CANCELLABLE_PHASES,
    FINAL_PHASES,
    MAX_TOTAL_MINOR,
    PAYMENT_ATTEMPTED_PHASES,
    LineItem,
    Order,
    Phase,
    Saga,
    cancelled_by_user,
    is_free,
)
from services.order.participants import StepError
from services.order.store import OrderStore

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 0.05

T = TypeVar("T")


@dataclass(frozen=True)
class SagaSettings:
    step_retry_seconds: float
    max_backoff_seconds: float
    hold_seconds: float
    max_step_failures: int = 5
    """Final answers of one step past the pivot (or unexpected errors) before parking."""
    park_after_seconds: float = 3600.0
    """How long one step past the pivot retries transient failures before parking."""
    crash_at: str = ""
    """TEST ONLY: the named step at which the process kills itself (kill -9)."""


class SagaParticipants(Protocol):
    """The calls the saga makes; each raises StepError. Implemented over gRPC by
    services.order.participants (and over HTTP by the benchmark's baseline)."""

    async def reserve(self, order: Order, hold_seconds: float) -> list[LineItem]: ...
    async def commit(self, order: Order) -> None: ...
    async def release(self, order: Order) -> None: ...
    async def authorize(self, order: Order) -> None: ...
    async def capture(self, order: Order) -> None: ...
    async def void(self, order: Order) -> None: ...


class Parked(Exception):
    """The saga cannot go on by itself: it is parked with `reason` until an operator acts."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StepFailed(Exception):
    """A step failed for good; the saga compensates with `error` as the order's reason."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.message)
        self.error = error


class SagaRunner:
    def __init__(
        self, store: OrderStore, participants: SagaParticipants, settings: SagaSettings
    ) -> None:
        self._store = store
        self._participants = participants
        self._settings = settings
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def ensure(self, order_id: str) -> asyncio.Task[None]:
        """The task driving this order, started if none runs in this process."""
        task = self._tasks.get(order_id)
        if task is None or task.done():
            task = asyncio.create_task(self._drive_until_final(order_id), name=f"saga-{order_id}")
            self._tasks[order_id] = task
            task.add_done_callback(lambda done: self._forget(order_id, done))
        return task

    def _forget(self, order_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(order_id) is task:
            del self._tasks[order_id]

    def resume(self, idle_since: float) -> int:
        """Drives every saga that is not final and has not moved since `idle_since`."""
        ids = [i for i in self._store.open_sagas(idle_since) if i not in self._tasks]
        for order_id in ids:
            self.ensure(order_id)
        if ids:
            log.info("resuming %d unfinished sagas", len(ids))
        return len(ids)

    async def stop(self) -> None:
        """Stops driving; the records stay, and the next start resumes them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def crash_point(self, name: str) -> None:
        if self._settings.crash_at == name:
            log.warning("crash_at=%s: killing this process with SIGKILL", name)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _drive_until_final(self, order_id: str) -> None:
        # A storage fault or a bug must not end the drive silently (the order would stay
        # PENDING): it is retried with backoff, and parked if it keeps failing.
        failures = 0
        delay = FIRST_BACKOFF_SECONDS
        while True:
            try:
                try:
                    await self._drive(order_id)
                    return
                except Parked as parked:
                    if await self._park(order_id, parked):
                        return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                if failures < self._settings.max_step_failures:
                    log.warning(
                        "saga %s failed unexpectedly (%s: %s), failure %d of %d; retrying",
                        *(order_id, type(error).__name__, error, failures),
                        self._settings.max_step_failures,
                    )
                else:
                    log.exception("saga %s keeps failing unexpectedly; parking it", order_id)
                    detail = f"{type(error).__name__}: {error}"
                    with contextlib.suppress(Exception):  # storage down: try again later
                        if await self._park(order_id, Parked("UNEXPECTED_ERROR", detail)):
                            return
            delay = await self._sleep(delay)

    async def _park(self, order_id: str, parked: Parked) -> bool:
        """Parks the saga where it stands; False if it moved meanwhile (drive it on)."""
        phase = self._store.saga(order_id).phase
        if phase in FINAL_PHASES:
            return True
        if not await self._store.park(order_id, phase, parked.reason, parked.detail, time.time()):
            return self._store.saga(order_id).parked
        log.error(
            "saga %s parked in %s: %s (%s); %d sagas need attention",
            *(order_id, phase.value, parked.reason, parked.detail),
            len(self._store.parked()),
        )
        return True

    async def _drive(self, order_id: str) -> None:
        while True:
            saga = self._store.saga(order_id)
            if saga.phase in FINAL_PHASES or saga.parked:
                return
            order = self._store.order(order_id)
            if saga.phase is Phase.COMPENSATING:
                await self._compensate(order, saga)
                continue
            if saga.cancel_requested and saga.phase in CANCELLABLE_PHASES:
                await self._store.begin_compensation(
                    order_id, saga.phase, cancelled_by_user(), time.time()
                )
                continue
            try:
                await self._forward(order, saga.phase)
            except StepFailed as failed:
                log.info("order %s: %s; compensating", order_id, failed.error.reason)
                await self._store.begin_compensation(
                    order_id, saga.phase, failed.error, time.time()
                )

    async def _forward(self, order: Order, phase: Phase) -> None:
        """Takes the one step after `phase` and records it."""
        if phase is Phase.STARTED:
            items = await self._before_pivot(
                order,
                lambda: self._participants.reserve(order, self._settings.hold_seconds),
                "inventory",
            )
            currency = _one_currency(items)
            total = sum((i.price_minor or 0) * i.quantity for i in items)
            if total > MAX_TOTAL_MINOR:
                raise StepFailed(
                    ServiceError(
                        ErrorKind.INVALID_ARGUMENT,
                        "AMOUNT_OUT_OF_RANGE",
                        f"the order's total is above {MAX_TOTAL_MINOR} minor units",
                        violations=(FieldViolation("line_items", "the total is too large"),),
                    )
                )
            await self._store.record_reserved(order.order_id, items, currency, time.time())
            self.crash_point("after_reserve")
        elif phase is Phase.RESERVED:
            if not is_free(order):
                await self._before_pivot(
                    order, lambda: self._participants.authorize(order), "payment"
                )
            # Authorized: on to the pivot in the same write, unless a cancel was asked for
            # meanwhile; then AUTHORIZED, and the next turn compensates (voids, releases).
            now = time.time()
            if not await self._store.advance(order.order_id, Phase.RESERVED, Phase.COMMITTING, now):
                await self._store.advance(order.order_id, Phase.RESERVED, Phase.AUTHORIZED, now)
            self.crash_point("after_authorize")
        elif phase is Phase.AUTHORIZED:  # only sagas an older version left in AUTHORIZED
            await self._store.advance(
                order.order_id, Phase.AUTHORIZED, Phase.COMMITTING, time.time()
            )
        elif phase is Phase.COMMITTING:
            try:
                await self._until_done(
                    "commit", lambda: self._participants.commit(order), stop_on_final=True
                )
            except StepError as error:
                # The hold expired or was released: nothing was sold, so we can still cancel.
                raise StepFailed(error.error) from error
            self.crash_point("after_commit")
            if not is_free(order):
                await self._until_done("capture", lambda: self._participants.capture(order))
            await self._store.finish(order.order_id, Phase.COMMITTING, time.time())

    async def _compensate(self, order: Order, saga: Saga) -> None:
        """Undoes what may have happened, newest first, then records CANCELLED."""
        if saga.compensate_from in PAYMENT_ATTEMPTED_PHASES and not is_free(order):
            await self._until_done("void", lambda: self._participants.void(order))
            self.crash_point("during_compensation")
        await self._until_done("release", lambda: self._participants.release(order))
        await self._store.finish(order.order_id, Phase.COMPENSATING, time.time())

    async def _before_pivot(
        self, order: Order, step: Callable[[], Awaitable[T]], participant: str
    ) -> T:
        """Runs a step, retrying transient failures for a while; then the order is cancelled.

        A user's cancel also ends the retrying: the order need not wait for a participant
        that is down before its compensation starts."""
        deadline = time.monotonic() + self._settings.step_retry_seconds
        delay = FIRST_BACKOFF_SECONDS
        while True:
            try:
                return await step()
            except StepError as error:
                if not error.transient:
                    raise StepFailed(_as_order_error(error)) from error
                if time.monotonic() + delay > deadline:
                    raise StepFailed(
                        ServiceError(
                            ErrorKind.ABORTED,
                            f"{participant.upper()}_UNAVAILABLE",
                            f"the {participant} service did not answer in time;"
                            " the order was cancelled",
                        )
                    ) from error
                log.warning("%s; retrying in %.2fs", error, delay)
            delay = await self._sleep(delay)
            if self._store.saga(order.order_id).cancel_requested:
                raise StepFailed(cancelled_by_user())

    async def _until_done(
        self, name: str, step: Callable[[], Awaitable[None]], stop_on_final: bool = False
    ) -> None:
        """Runs a step that must happen (past the pivot, or undoing) until it succeeds, or
        raises Parked once it has failed too often or too long to pass by itself."""
        delay = FIRST_BACKOFF_SECONDS
        refusals = 0
        deadline = time.monotonic() + self._settings.park_after_seconds
        while True:
            try:
                await step()
                return
            except StepError as error:
                if not error.transient and stop_on_final:
                    raise
                if not error.transient:
                    refusals += 1
                    if refusals >= self._settings.max_step_failures:
                        raise Parked(f"{name.upper()}_REFUSED", str(error)) from error
                elif time.monotonic() > deadline:
                    raise Parked(f"{name.upper()}_UNAVAILABLE", str(error)) from error
                level = logging.WARNING if error.transient else logging.ERROR
                log.log(level, "%s; retrying in %.2fs", error, delay)
            delay = await self._sleep(delay)

    async def _sleep(self, delay: float) -> float:
        """Waits about `delay` (with jitter, so retries do not march in step); the next delay."""
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        return min(delay * 2, self._settings.max_backoff_seconds)


def _one_currency(items: list[LineItem]) -> str:
    currencies = {i.currency for i in items}
    if len(currencies) != 1:
        raise StepFailed(
            ServiceError(
                ErrorKind.FAILED_PRECONDITION,
                "CURRENCY_MISMATCH",
                "the products of one order must share a currency",
            )
        )
    return currencies.pop()


def _as_order_error(error: StepError) -> ServiceError:
    """A participant's final error, told in the order's terms (inventory's `items[2]` is
    the order's `line_items[2]`)."""
    own = error.error
    violations = tuple(
        FieldViolation(
            v.field.replace("items[", "line_items[", 1)
            if v.field.startswith("items[")
            else v.field,
            v.description,
        )
        for v in own.violations
    )
    return ServiceError(
        own.kind, own.reason, own.message, metadata=own.metadata, violations=violations
    )
