"""The outbox relay: in a producing service's process, publishes the outbox's pending
events (services.common.outbox) through a `Publisher`, oldest first, and marks them sent.

One relay per service database publishes at a time: the one holding the outbox's lease;
the others (other instances of the service) stand by and take the lease once it runs out
or is released. The holder trusts its lease for half of it, by its monotonic clock
counted from before the statement that took or renewed it (the database's expiry is a
whole lease after that statement ran), and starts a publish only while that trust has at
least the publish timeout left; a publish that takes longer is abandoned. So the last
publish of a relay that stopped renewing (paused, cut off from its database) has ended
before any other relay can take the lease.

A batch is published in waves: the first pending event of every aggregate in it at once,
then, once those are acked, each aggregate's next, and so on (`waves`). So one round trip
to the server carries many events (a third of the CPU per event of publishing one at a
time, and far more events a second: docs/events-delivery.md), while an aggregate's event
is published only after its previous one was acked, so each aggregate's events reach the
stream in sequence order. An aggregate whose publish failed publishes nothing more in
the batch (its later events must not overtake it); the others go on. The acked events
are marked sent in one statement fenced by the lease's epoch, and after a failure the
relay backs off (jittered, bounded) before it tries again; the events wait in the outbox
meanwhile. A relay killed between an ack and the mark publishes the same event (same
id) again next time: at-least-once, with `Nats-Msg-Id` (the event id) letting the server
drop a repeat inside its duplicates window, and consumers dedup by event id after it.

A commit that appended events wakes the relay (`Outbox.notify`, in-process), which then
lingers a moment (`linger_seconds`, 50 ms by default) so that the commits of that moment
share its next batch; it also polls, for the rows other instances of the service
commit. Now and then it prunes sent events past the retention. No library does this: an
outbox relay is a loop over the service's own tables (Debezium reads the database's log
instead, a separate process and a connector per database; here the tables are the
service's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Protocol

from services.common import db
from services.common.config import StoreConfig
from services.common.errors import ServiceError
from services.common.outbox import LeaseLost, Outbox, Pending, RelayLease

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 0.1
"""The relay's first wait after a failed publish; it doubles with each failure after."""
CRASH_EXIT_CODE = 70
"""The exit code of the TEST ONLY crash between an ack and the mark (exit_after_publishes)."""
PRUNE_BATCH = 1000
"""Events one prune statement deletes at most (a short transaction); more wait a step."""


class Publisher(Protocol):
    """Where the relay sends events: JetStream on the real system (branch `nats`)."""

    async def publish(self, subject: str, msg_id: str, data: bytes) -> None:
        """Publishes `data` on `subject` with the header Nats-Msg-Id = `msg_id`, and returns
        once the server acknowledged it (a duplicate it dropped counts as acknowledged);
        raises if it did not."""
        ...


PublisherFactory = Callable[[str], Awaitable[Publisher]]
"""Makes the publisher of a service, given its nats_url."""


@dataclass(frozen=True)
class RelaySettings:
    """The relay's part of StoreConfig (the outbox_* fields, each one's help is there):
    built with `of`, so the defaults have one source."""

    lease_seconds: float
    publish_timeout_seconds: float
    batch_size: int
    poll_interval_seconds: float
    linger_seconds: float
    retention_seconds: float
    prune_interval_seconds: float
    max_backoff_seconds: float
    exit_after_publishes: int = 0

    @classmethod
    def of(cls, config: StoreConfig) -> RelaySettings:
        return cls(**{f.name: getattr(config, "outbox_" + f.name) for f in fields(cls)})


class Relay:
    """Publishes one outbox's events while it holds the outbox's lease (see the module)."""

    def __init__(
        self,
        outbox: Outbox,
        publisher: Publisher,
        settings: RelaySettings,
        owner: str | None = None,
    ) -> None:
        self.outbox = outbox
        self.publisher = publisher
        self.settings = settings
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease: RelayLease | None = None
        self._trusted_until = 0.0  # monotonic
        self._failures = 0
        self._publishes = 0
        self._next_prune = 0.0  # monotonic
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Runs the relay in the background until `stop`."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        """Finishes the step under way (a publish ends within its timeout), then gives the
        lease up, so a standby relay takes over at once."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self.lease is not None:
            lease, self.lease = self.lease, None
            try:
                await self.outbox.release(lease)
            except Exception as error:  # it runs out by itself
                log.warning("outbox relay: giving the lease up failed: %s", error)

    async def run(self) -> None:
        """Steps until stopped; a failed step (the database unavailable) is logged and
        retried after a backoff."""
        while not self._stopping.is_set():
            try:
                pause, wake = await self.step()
            except ServiceError as error:  # STORAGE_UNAVAILABLE: said by the store already
                log.warning("outbox relay: %s; trying again", error)
                self._failures += 1
                pause, wake = self._backoff(), False
            except Exception:
                log.exception("outbox relay step failed; trying again")
                self._failures += 1
                pause, wake = self._backoff(), False
            if pause > 0:
                await self._pause(pause, wake)

    async def step(self) -> tuple[float, bool]:
        """Takes or renews the lease, publishes one batch and marks what was acked; now
        and then prunes. Returns how long to wait before the next step, and whether a
        commit that appends events should cut that wait short."""
        lease = await self._hold()
        if lease is None:
            return self.settings.poll_interval_seconds, False
        batch = await self.outbox.pending(self.settings.batch_size)
        acked, failed = await self._publish(batch)
        if acked:
            try:
                # Under the lease held now: one taken again meanwhile has a new epoch.
                await self.outbox.mark_sent(self.lease or lease, acked)
            except LeaseLost:
                log.warning(
                    "outbox relay: lease epoch %d was taken over; %d acked events left for"
                    " its holder to publish again",
                    lease.epoch,
                    len(acked),
                )
                self.lease = None
        if self.lease is None:  # lost during the batch: another relay publishes now
            return self.settings.poll_interval_seconds, False
        if failed:
            self._failures += 1
            return self._backoff(), False
        self._failures = 0
        if time.monotonic() >= self._next_prune:
            await self._prune(self.lease)
        if len(batch) == self.settings.batch_size:
            return 0.0, False  # more are waiting
        return self.settings.poll_interval_seconds, True

    async def _publish(self, batch: list[Pending]) -> tuple[list[str], bool]:
        """Publishes `batch` wave by wave (see `waves`), each wave only while the lease is
        trusted for the publish timeout, each publish bounded by that timeout; an
        aggregate whose publish failed is left out of the later waves. Returns the acked
        event ids and whether a publish failed."""
        acked: list[str] = []
        failed: set[str] = set()  # aggregates
        timeout = self.settings.publish_timeout_seconds
        for whole in waves(batch):
            wave = [event for event in whole if event.aggregate_id not in failed]
            if not wave:
                break  # every aggregate left has failed (a later wave holds no others)
            if self._stopping.is_set():
                break  # what was acked is marked; the rest waits
            if self._trusted_left() < timeout and await self._hold() is None:
                break  # the lease is gone: its holder goes on
            errors = await self._publish_wave(wave)
            for event, error in zip(wave, errors, strict=True):
                if error is None:
                    acked.append(event.event_id)
                else:
                    failed.add(event.aggregate_id)
            if any(errors):
                self._log_failures(wave, errors, len(acked))
            self._count_publishes(wave, errors)
        return acked, bool(failed)

    async def _publish_wave(self, wave: list[Pending]) -> list[BaseException | None]:
        """Publishes `wave` at once (they are sent in order on the publisher's one
        connection) and waits up to the publish timeout for their acks; each one's error,
        None if acked. A publish still waiting at the timeout is abandoned (cancelled)."""
        timeout = self.settings.publish_timeout_seconds
        tasks = [
            asyncio.ensure_future(self.publisher.publish(e.subject, e.event_id, e.envelope))
            for e in wave
        ]
        try:
            _, late = await asyncio.wait(tasks, timeout=timeout)
        finally:  # also when the relay itself is cancelled: no publish is left running
            for task in tasks:
                task.cancel()
        await asyncio.wait(tasks)  # the cancelled ones have ended too
        return [
            TimeoutError(f"no PubAck within {timeout} s") if task in late else task.exception()
            for task in tasks
        ]

    def _log_failures(
        self, wave: list[Pending], errors: list[BaseException | None], acked: int
    ) -> None:
        """One line per wave, naming its first failure (with NATS away, every publish
        of the wave fails alike)."""
        failures = [(e, error) for e, error in zip(wave, errors, strict=True) if error]
        event, error = failures[0]
        log.warning(
            "outbox relay: publishing event %s (%s #%d) failed: %s: %s; %d of the wave's"
            " %d failed, %d of the batch acked so far",
            event.event_id,
            event.aggregate_id,
            event.sequence,
            type(error).__name__,
            error,
            len(failures),
            len(wave),
            acked,
        )

    def _count_publishes(self, wave: list[Pending], errors: list[BaseException | None]) -> None:
        """Counts the acked publishes; the TEST ONLY crash (exit_after_publishes) exits
        once the count reaches it, after those acks and before their mark."""
        for event, error in zip(wave, errors, strict=True):
            if error is not None:
                continue
            self._publishes += 1
            if self._publishes == self.settings.exit_after_publishes:
                log.warning(
                    "TEST ONLY: exiting after event %s was acknowledged, before marking it",
                    event.event_id,
                )
                logging.shutdown()
                os._exit(CRASH_EXIT_CODE)

    async def _hold(self) -> RelayLease | None:
        """The lease, renewed once a quarter of it is left to trust, or taken if free."""
        if self.lease is not None and self._trusted_left() > self.settings.lease_seconds / 4:
            return self.lease
        seconds = self.settings.lease_seconds
        taken_at = time.monotonic()
        if self.lease is not None:
            if await self.outbox.renew(self.lease, seconds):
                self._trusted_until = taken_at + seconds / 2
                return self.lease
            log.warning("outbox relay: lease epoch %d is no longer held", self.lease.epoch)
            self.lease = None
        lease = await self.outbox.acquire(self.owner, seconds)
        if lease is not None:
            log.info("outbox relay %s publishing, lease epoch %d", self.owner, lease.epoch)
            self.lease = lease
            self._trusted_until = taken_at + seconds / 2
        return lease

    def _trusted_left(self) -> float:
        return self._trusted_until - time.monotonic() if self.lease is not None else 0.0

    async def _prune(self, lease: RelayLease) -> None:
        try:
            pruned = await self.outbox.prune(lease, self.settings.retention_seconds, PRUNE_BATCH)
        except LeaseLost:
            log.warning("outbox relay: lease epoch %d was taken over; not pruning", lease.epoch)
            self.lease = None
            return
        if pruned:
            log.info("outbox relay: pruned %d sent events past the retention", pruned)
        # A full batch: more are due, at the next step.
        due_in = 0.0 if pruned == PRUNE_BATCH else self.settings.prune_interval_seconds
        self._next_prune = time.monotonic() + due_in

    def _backoff(self) -> float:
        """Jittered exponential, at most max_backoff_seconds (and an eighth of the lease
        while holding one, so that the wait never outlasts the lease's renewal)."""
        ceiling = self.settings.max_backoff_seconds
        if self.lease is not None:
            ceiling = min(ceiling, self.settings.lease_seconds / 8)
        delay = min(ceiling, FIRST_BACKOFF_SECONDS * 2.0 ** max(0, self._failures - 1))
        return delay * (0.5 + random.random() / 2)

    async def _pause(self, seconds: float, wake: bool) -> None:
        """Waits `seconds` (an eighth of the lease at most while holding one, so it is
        renewed in time), or until stopped, or (with `wake`) until a commit appended and
        then the linger (`linger_seconds`), so that the commits of that time share one
        batch: under load, one step (a read, a wave or two, a mark) costs about as much
        CPU for one event as for dozens."""
        if self.lease is not None:
            seconds = min(seconds, self.settings.lease_seconds / 8)
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._stopping.wait())]
        if wake:
            waits.append(asyncio.ensure_future(self.outbox.appended()))
        try:
            done, _ = await asyncio.wait(
                waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if wake and waits[1] in done and self.settings.linger_seconds > 0:
                # Woken by a commit: the ones of the next moment join its batch.
                await asyncio.wait([waits[0]], timeout=self.settings.linger_seconds)
        finally:
            for each in waits:
                each.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await each


def waves(batch: list[Pending]) -> list[list[Pending]]:
    """`batch` (oldest first) as waves: wave i holds the i-th event of each aggregate in
    the batch, in the batch's order. Publishing a wave only once the one before it was
    acked keeps each aggregate's order; events of different aggregates have none to keep.
    """
    found: list[list[Pending]] = []
    seen: dict[str, int] = {}
    for event in batch:
        nth = seen.get(event.aggregate_id, 0)
        seen[event.aggregate_id] = nth + 1
        if nth == len(found):
            found.append([])
        found[nth].append(event)
    return found


async def started(
    store: db.Store, config: StoreConfig, publishers: PublisherFactory | None
) -> Relay | None:
    """The relay of a producing service's store, started; None (no relay: events wait in
    the outbox) unless the config names a NATS server and the process has `publishers`
    to reach it with."""
    if not config.nats_url:
        return None
    if publishers is None:
        log.warning("nats_url is set, but no publisher was given: no outbox relay runs")
        return None
    relay = Relay(store.outbox, await publishers(config.nats_url), RelaySettings.of(config))
    relay.start()
    return relay
