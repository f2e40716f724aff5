"""The read model's consumer: fetch a batch of stream messages, decode them, compose the
product names they need, apply the batch in one transaction, then settle each message
(ack what was applied, skipped or a duplicate; term what was parked).

It reads through two small protocols, `Source` (a pull consumer and the stream's last
sequence) and `Names` (inventory's product names), so that its logic runs in tests
without NATS or inventory; services.reporting.nats_source is the JetStream source.
A batch that cannot be applied (the database or inventory away) is nak'ed with a delay
and fetched again: nothing is acked before its effect has committed. An event that
cannot be applied for a reason of its own (not an outage) is parked, so it blocks nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from services.common.errors import ErrorKind, ServiceError
from services.reporting.domain import Event, Outcome, decode
from services.reporting.store import Applied, ReportingStore

log = logging.getLogger(__name__)


class Message(Protocol):
    """One delivered stream message (services.common.jetstream's Delivery is one)."""

    @property
    def data(self) -> bytes: ...
    @property
    def stream_sequence(self) -> int: ...
    async def ack(self) -> None: ...
    async def nak(self, delay_seconds: float | None = None) -> None: ...
    async def term(self) -> None: ...


class Source(Protocol):
    async def fetch(self, batch: int, wait_seconds: float) -> Sequence[Message]:
        """Up to `batch` messages, waiting about `wait_seconds`; [] if none came."""
        ...

    async def last_sequence(self) -> int | None:
        """The stream's last sequence; None if the server cannot be asked now."""
        ...


class Names(Protocol):
    async def name(self, sku: str) -> str:
        """The product's name; "" if inventory has no such product. Raises if inventory
        cannot answer now (the batch is retried later)."""
        ...


@dataclass(frozen=True)
class Lag:
    events_behind: int | None
    """The stream's last sequence minus the last one applied; None: NATS did not answer."""
    seconds_behind: float | None
    """Now minus the last applied event's occurred_at; None: nothing applied yet."""
    applied_sequence: int
    stream_sequence: int | None
    last_occurred_at: float | None
    applied: int
    skipped: int
    parked: int


async def lag(store: ReportingStore, source: Source | None, now: float | None = None) -> Lag:
    state = await store.state()
    last = await source.last_sequence() if source is not None else None
    at = time.time() if now is None else now
    return Lag(
        None if last is None else max(0, last - state.applied_sequence),
        None if state.last_occurred_at is None else max(0.0, at - state.last_occurred_at),
        state.applied_sequence,
        last,
        state.last_occurred_at,
        state.applied,
        state.skipped,
        state.parked,
    )


class Projector:
    """Applies stream messages to the store, a batch at a time."""

    def __init__(
        self,
        store: ReportingStore,
        names: Names,
        *,
        retry_delay_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self._names = names
        self._cache: dict[str, str] = {}
        self.retry_delay_seconds = retry_delay_seconds

    async def handle(self, messages: Sequence[Message]) -> Applied | None:
        """Applies and settles one batch; None if it could not be applied now (every
        message nak'ed with the retry delay, to come again)."""
        return await self._handle(messages, [decode(m.data, m.stream_sequence) for m in messages])

    async def _handle(self, messages: Sequence[Message], events: list[Event]) -> Applied | None:
        try:
            names = await self._names_for(events)
            applied = await self.store.apply(events, names)
        except Exception as error:
            if not transient(error) and len(events) > 1:
                # One event that cannot be applied must not hold the others back: one at
                # a time, so that only it is parked.
                return await self._one_by_one(messages, events)
            if not transient(error) and events[0].outcome is not Outcome.PARK:
                log.exception("event %s cannot be applied", events[0].event_id)
                parked = dataclasses.replace(
                    events[0], outcome=Outcome.PARK, problem=f"cannot be applied: {error!r}"
                )
                return await self._handle(messages, [parked])
            log.warning(
                "could not apply %d events (stream %d..%d), retrying in %.1fs: %s",
                len(events),
                events[0].stream_sequence,
                events[-1].stream_sequence,
                self.retry_delay_seconds,
                _reason(error),
            )
            for message in messages:
                await message.nak(self.retry_delay_seconds)
            return None
        for event, message in zip(events, messages, strict=True):
            if event.outcome is Outcome.PARK:
                log.error(
                    "parked stream message %d%s (terminated, never redelivered): %s",
                    event.stream_sequence,
                    f", event {event.event_id}" if event.event_id else "",
                    event.problem,
                )
                await message.term()
            else:
                if event.outcome is Outcome.SKIP:
                    log.info("skipped event %s of unknown type %s", event.event_id, event.type)
                await message.ack()
        return applied

    async def _one_by_one(self, messages: Sequence[Message], events: list[Event]) -> Applied | None:
        total = Applied()
        for index, (message, event) in enumerate(zip(messages, events, strict=True)):
            done = await self._handle([message], [event])
            if done is None:  # not now: the rest waits too
                for later in messages[index + 1 :]:
                    await later.nak(self.retry_delay_seconds)
                return None
            total = Applied(
                total.applied + done.applied,
                total.duplicates + done.duplicates,
                total.skipped + done.skipped,
                total.parked + done.parked,
            )
        return total

    async def _names_for(self, events: Sequence[Event]) -> dict[str, str]:
        """The name of every SKU of the batch: from this process's cache, else the store's
        product_names, else inventory (asked once per SKU, ever)."""
        wanted = set().union(*(e.skus for e in events)) if events else set()
        missing = wanted - self._cache.keys()
        if missing:
            self._cache.update(await self.store.names(missing))
        for sku in sorted(wanted - self._cache.keys()):
            self._cache[sku] = await self._names.name(sku)
        return {sku: self._cache[sku] for sku in wanted}


def transient(error: Exception) -> bool:
    """Whether `error` says "not now" (the database, inventory or the network away), so
    the batch is tried again; anything else is this event's own fault (parked)."""
    if isinstance(error, ServiceError):
        return error.kind is ErrorKind.UNAVAILABLE
    return isinstance(error, OSError | TimeoutError | grpc.RpcError)


def _reason(error: Exception) -> str:
    if isinstance(error, ServiceError):
        return f"{error.reason}: {error.message}"
    return f"{type(error).__name__}: {error}"


async def run(
    projector: Projector,
    source: Source,
    *,
    batch: int,
    wait_seconds: float,
    lag_log_interval_seconds: float,
    stop: asyncio.Event,
    until_sequence: int | None = None,
) -> None:
    """Fetches and applies until `stop` is set (or, with `until_sequence`, until the store
    has applied that stream sequence: a rebuild). Logs the lag every
    `lag_log_interval_seconds`."""
    next_log = 0.0
    while not stop.is_set():
        try:
            if (
                until_sequence is not None
                and (await projector.store.state()).applied_sequence >= until_sequence
            ):
                return
            messages = await source.fetch(batch, wait_seconds)
            if messages:
                await projector.handle(messages)
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + lag_log_interval_seconds
                await _log_lag(projector.store, source)
        except Exception as error:  # an ack lost with the connection, the database away
            # Unsettled messages come again after the consumer's ack wait, and their
            # effects, if committed, are deduplicated then: go on rather than stop feeding.
            log.warning("consuming failed, going on: %s", _reason(error))
            await asyncio.sleep(projector.retry_delay_seconds)


async def _log_lag(store: ReportingStore, source: Source) -> None:
    found = await lag(store, source)
    log.info(
        "reporting lag: %s events behind, %s seconds behind (applied up to %d;"
        " %d applied, %d skipped, %d parked)",
        "?" if found.events_behind is None else found.events_behind,
        "-" if found.seconds_behind is None else f"{found.seconds_behind:.1f}",
        found.applied_sequence,
        found.applied,
        found.skipped,
        found.parked,
    )
