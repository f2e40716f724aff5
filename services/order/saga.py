"""The order saga's orchestrator: drives each order from its saga record to a final state.

The record in the order database is the truth; this code only reads it, makes the next
call, and records the outcome. So a process that dies anywhere loses nothing: another
instance (or this one, restarted) adopts every saga whose lease has expired (`adopt`) and
drives it on from where its record says it is, repeating at most the one step in flight,
which every participant accepts again (idempotent by order id).

One instance drives a saga at a time: its lease (services.order.store) is renewed in the
background while the saga runs, is checked before every participant call, and fences
every write. Local timers (backoff, retry and parking deadlines, lease trust) use the
monotonic clock, so a jump of the wall clock moves none of them; lease expiry, which
other processes read, is the database's time (the store sets and compares it). An
instance drives at most `max_active_sagas` at once; the others wait for a slot, and it
adopts no more than it has slots for.

A free order (a total of 0) skips the payment steps: there is nothing to authorize,
capture or void (see `is_free`).

Before the pivot, transient failures are retried for `step_retry_seconds`, then the order
is cancelled; final failures cancel at once. From the pivot on, and while compensating, a
step cannot be given up (that would lose stock or money), but it is not retried for ever
in silence either: after `max_step_failures` final answers (a capture of a voided payment,
a release of a committed hold), after `park_after_seconds` of transient ones, or after
`max_step_failures` unexpected errors anywhere (the order database's own
STORAGE_UNAVAILABLE is not one: it is waited out), the saga is parked: it stays as it is,
PENDING to its caller, is driven no more, is listed for operators, and is driven again
once an operator resumes it (`OrderStore.parked`, `unpark`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Protocol, TypeVar

from services.common.errors import ErrorKind, FieldViolation, ServiceError
from services.order.config import OrderConfig
from services.order.domain import (
    CANCELLABLE_PHASES,
    FINAL_PHASES,
    MAX_TOTAL_MINOR,
    PAYMENT_ATTEMPTED_PHASES,
    Lease,
    LeaseLost,
    LineItem,
    Order,
    Phase,
    Saga,
    cancelled_by_user,
    is_free,
)
from services.order.store import OrderStore

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 0.05

T = TypeVar("T")


@dataclass(frozen=True)
class SagaSettings:
    """The saga's part of OrderConfig, field for field (each one's help is there): built
    with `of`, so the defaults have one source."""

    step_retry_seconds: float
    max_backoff_seconds: float
    hold_seconds: float
    max_step_failures: int
    park_after_seconds: float
    lease_seconds: float
    max_active_sagas: int
    crash_at: str

    @classmethod
    def of(cls, config: OrderConfig) -> SagaSettings:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


class StepError(Exception):
    """A participant's answer other than success, as the error it returned, and whether
    the failure is worth retrying (it says nothing about the request, only the moment)."""

    def __init__(self, participant: str, error: ServiceError, transient: bool) -> None:
        super().__init__(f"{participant}: {error.reason or error.kind.name}: {error.message}")
        self.participant = participant
        self.error = error
        self.transient = transient


class SagaParticipants(Protocol):
    """The calls the saga makes; each returns or raises StepError. Implemented over gRPC
    by services.order.participants.GrpcParticipants (and over HTTP by the benchmark's
    baseline)."""

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


@dataclass
class _Held:
    """A lease this process holds, and until when (monotonic) it trusts it unchecked."""

    lease: Lease
    trusted_until: float


@dataclass(frozen=True)
class FirstLease:
    """The lease a new order's saga starts under, written with the order (OrderStore.create)."""

    lease: Lease
    seconds: float
    """How long it lasts from when it is written (the database's clock sets its expiry)."""
    taken_at: float
    """When it was made (monotonic), for how long to trust it."""


class SagaRunner:
    def __init__(
        self,
        store: OrderStore,
        participants: SagaParticipants,
        settings: SagaSettings,
        owner: str = "",
    ) -> None:
        self._store = store
        self._participants = participants
        self._settings = settings
        # Unique among live processes on a host (a pid is), and says where it runs.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, _Held] = {}
        self._slots = asyncio.Semaphore(settings.max_active_sagas)
        self._renewer: asyncio.Task[None] | None = None

    def first_lease(self, order_id: str) -> FirstLease:
        return FirstLease(
            Lease(order_id, self.owner, 1),
            self._settings.lease_seconds,
            time.monotonic(),
        )

    def ensure(self, order_id: str, first: FirstLease | None = None) -> asyncio.Task[None]:
        """The task driving this order here, started if none runs in this process. It
        drives the saga under `first`, or under a lease it takes; if another instance holds
        the lease, it ends at once (that instance drives the saga)."""
        task = self._tasks.get(order_id)
        if task is None or task.done():
            task = asyncio.create_task(self._run(order_id, first), name=f"saga-{order_id}")
            self._tasks[order_id] = task
            task.add_done_callback(lambda done: self._forget(order_id, done))
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever(), name="saga-leases")
        return task

    def _forget(self, order_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(order_id) is task:
            del self._tasks[order_id]

    async def wait(self, order_id: str, seconds: float) -> None:
        """Returns once the saga is final or parked, or after `seconds`, whichever
        instance drives it (this one is asked to, if none does)."""
        deadline = time.monotonic() + seconds
        await asyncio.wait({self.ensure(order_id)}, timeout=seconds)
        delay = FIRST_BACKOFF_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            saga = await self._store.saga(order_id)
            if saga.phase in FINAL_PHASES or saga.parked:
                return
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)

    async def adopt(self) -> int:
        """Drives sagas nobody drives (no lease, or an expired one), oldest first, as many
        as this instance has free slots for; returns how many it tries to take."""
        free = self._settings.max_active_sagas - len(self._tasks)
        if free <= 0:
            return 0
        candidates = await self._store.open_sagas(free + len(self._tasks))
        ids = [i for i in candidates if i not in self._tasks][:free]
        for order_id in ids:
            self.ensure(order_id)
        if ids:
            log.info("adopting up to %d sagas nobody drives", len(ids))
        return len(ids)

    async def stop(self) -> None:
        """Stops driving and gives the leases up, so other instances adopt the sagas at
        once; the records stay."""
        held = [h.lease for h in self._held.values()]
        tasks = [*self._tasks.values(), *([self._renewer] if self._renewer else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if held:
            with contextlib.suppress(Exception):  # storage down: they expire by themselves
                await self._store.release(held)

    async def _run(self, order_id: str, first: FirstLease | None) -> None:
        try:
            if first is not None:
                self._trust(first.lease, first.taken_at)
            else:
                try:
                    if not await self._acquire(order_id):
                        return  # another instance drives it, or it is final
                except Exception as error:  # storage down: adopted on a later round
                    log.warning("saga %s: its lease cannot be taken now (%s)", order_id, error)
                    return
            async with self._slots:
                await self._drive_until_final(order_id)
        except LeaseLost as lost:
            log.info(
                "saga %s: lease epoch %d lost, another instance drives it now",
                *(order_id, lost.lease.epoch),
            )
        finally:
            self._held.pop(order_id, None)

    async def _acquire(self, order_id: str) -> bool:
        taken_at = time.monotonic()
        lease = await self._store.acquire(order_id, self.owner, self._settings.lease_seconds)
        if lease is None:
            return False
        if lease.epoch > 1:
            log.info("saga %s adopted (lease epoch %d)", order_id, lease.epoch)
        self._trust(lease, taken_at)
        return True

    def _trust(self, lease: Lease, taken_at: float) -> None:
        # Half the lease: the other half is the margin for a renewal that is slow to land.
        self._held[lease.order_id] = _Held(lease, taken_at + self._settings.lease_seconds / 2)

    def _lease(self, order_id: str) -> Lease:
        return self._held[order_id].lease

    async def _keep_lease(self, order_id: str) -> None:
        """Before a participant call: raises LeaseLost unless the lease is still this
        process's. Checked in the database only when the local trust has run out (the
        background renewal fell behind: the process was paused, or storage was slow)."""
        held = self._held[order_id]
        if time.monotonic() < held.trusted_until:
            return
        taken_at = time.monotonic()
        if not await self._store.renew(held.lease, self._settings.lease_seconds):
            raise LeaseLost(held.lease)
        self._trust(held.lease, taken_at)

    async def _renew_forever(self) -> None:
        """Renews every lease held, a third of a lease apart; a lease found lost is
        distrusted, so its saga stops before its next call or write."""
        while True:
            await asyncio.sleep(self._settings.lease_seconds / 3)
            held = list(self._held.values())
            if not held:
                continue
            taken_at = time.monotonic()
            try:
                kept = await self._store.renew_all(
                    [h.lease for h in held], self._settings.lease_seconds
                )
            except Exception as error:  # storage down: each saga checks before its calls
                log.warning("renewing %d saga leases failed: %s", len(held), error)
                continue
            for h in held:
                if self._held.get(h.lease.order_id) is h:
                    h.trusted_until = (
                        taken_at + self._settings.lease_seconds / 2
                        if h.lease in kept
                        else -math.inf
                    )

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
            except (asyncio.CancelledError, LeaseLost):
                raise
            except Exception as error:
                if _storage_fault(error):
                    # The order's own database is down (a server restarting takes
                    # seconds): transient, as a participant's UNAVAILABLE is, so it is
                    # waited out. Counted as a bug, a restart parked every saga in flight.
                    log.warning("saga %s: the order database is unavailable; retrying", order_id)
                    delay = await self._sleep(delay)
                    continue
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
        phase = (await self._store.saga(order_id)).phase
        if phase in FINAL_PHASES:
            return True
        lease = self._lease(order_id)
        if not await self._store.park(lease, phase, parked.reason, parked.detail):
            return (await self._store.saga(order_id)).parked
        log.error(
            "saga %s parked in %s: %s (%s); %d sagas need attention",
            *(order_id, phase.value, parked.reason, parked.detail),
            len(await self._store.parked()),
        )
        return True

    async def _drive(self, order_id: str) -> None:
        while True:
            saga, order = await self._store.saga_and_order(order_id)
            if saga.phase in FINAL_PHASES or saga.parked:
                return
            if saga.phase is Phase.COMPENSATING:
                await self._compensate(order, saga)
                continue
            lease = self._lease(order_id)
            if saga.cancel_requested and saga.phase in CANCELLABLE_PHASES:
                await self._store.begin_compensation(lease, saga.phase, cancelled_by_user())
                continue
            try:
                await self._forward(order, saga.phase)
            except StepFailed as failed:
                log.info("order %s: %s; compensating", order_id, failed.error.reason)
                await self._store.begin_compensation(lease, saga.phase, failed.error)

    async def _forward(self, order: Order, phase: Phase) -> None:
        """Takes the one step after `phase` and records it."""
        lease = self._lease(order.order_id)
        if phase is Phase.STARTED:
            items = await self._before_pivot(
                order,
                "reserve",
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
            await self._store.record_reserved(lease, items, currency)
            self.crash_point("after_reserve")
        elif phase is Phase.RESERVED:
            if not is_free(order):
                await self._before_pivot(
                    order, "authorize", lambda: self._participants.authorize(order), "payment"
                )
            # Authorized: on to the pivot in the same write, unless a cancel was asked for
            # meanwhile; then AUTHORIZED, and the next turn compensates (voids, releases).
            if not await self._store.advance(lease, Phase.RESERVED, Phase.COMMITTING):
                await self._store.advance(lease, Phase.RESERVED, Phase.AUTHORIZED)
            self.crash_point("after_authorize")
        elif phase is Phase.AUTHORIZED:  # only sagas an older version left in AUTHORIZED
            await self._store.advance(lease, Phase.AUTHORIZED, Phase.COMMITTING)
        elif phase is Phase.COMMITTING:
            try:
                await self._until_done(
                    order, "commit", lambda: self._participants.commit(order), stop_on_final=True
                )
            except StepError as error:
                # The hold expired or was released: nothing was sold, so we can still cancel.
                raise StepFailed(error.error) from error
            self.crash_point("after_commit")
            if not is_free(order):
                await self._until_done(order, "capture", lambda: self._participants.capture(order))
            await self._store.finish(lease, Phase.COMMITTING)

    async def _compensate(self, order: Order, saga: Saga) -> None:
        """Undoes what may have happened, newest first, then records CANCELLED."""
        if saga.compensate_from in PAYMENT_ATTEMPTED_PHASES and not is_free(order):
            await self._until_done(order, "void", lambda: self._participants.void(order))
            self.crash_point("during_compensation")
        await self._until_done(order, "release", lambda: self._participants.release(order))
        await self._store.finish(self._lease(order.order_id), Phase.COMPENSATING)

    async def _before_pivot(
        self, order: Order, name: str, step: Callable[[], Awaitable[T]], participant: str
    ) -> T:
        """Runs a step, retrying transient failures for a while; then the order is cancelled.

        A user's cancel also ends the retrying: the order need not wait for a participant
        that is down before its compensation starts."""
        deadline = time.monotonic() + self._settings.step_retry_seconds
        delay = FIRST_BACKOFF_SECONDS
        while True:
            await self._call_ready(order, name)
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
            if (await self._store.saga(order.order_id)).cancel_requested:
                raise StepFailed(cancelled_by_user())

    async def _until_done(
        self,
        order: Order,
        name: str,
        step: Callable[[], Awaitable[None]],
        stop_on_final: bool = False,
    ) -> None:
        """Runs a step that must happen (past the pivot, or undoing) until it succeeds, or
        raises Parked once it has failed too often or too long to pass by itself."""
        delay = FIRST_BACKOFF_SECONDS
        refusals = 0
        deadline = time.monotonic() + self._settings.park_after_seconds
        while True:
            await self._call_ready(order, name)
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

    async def _call_ready(self, order: Order, name: str) -> None:
        """Before each participant call: the lease must still be this process's."""
        await self._keep_lease(order.order_id)
        log.debug(
            "saga %s: %s, lease epoch %d", order.order_id, name, self._lease(order.order_id).epoch
        )

    async def _sleep(self, delay: float) -> float:
        """Waits about `delay` (with jitter, so retries do not march in step); the next delay."""
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        return min(delay * 2, self._settings.max_backoff_seconds)


def _storage_fault(error: Exception) -> bool:
    """Whether `error` is the store's STORAGE_UNAVAILABLE (nothing was half applied)."""
    return (
        isinstance(error, ServiceError)
        and error.kind is ErrorKind.UNAVAILABLE
        and error.reason == "STORAGE_UNAVAILABLE"
    )


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
