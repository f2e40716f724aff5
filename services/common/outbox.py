"""The transactional outbox: events written in the same transaction as the state change
they report, and the statements the relay (services.common.relay) works with.

A store's write function calls `await append(tx, ...)` next to its own statements, so
the event commits with the change (on SQLite: in the same group-commit savepoint) or not
at all. The outbox knows nothing of the events' contents: the caller builds the envelope
bytes (a serialized shop.events.v1.EventEnvelope) from the event id, the aggregate's
next sequence number and the time, which `append` hands it. Tables: each service's
migrations/<backend>/NNNN_outbox.sql; docs/outbox.md says what is guaranteed.

Why the relay reads rows in `rowid` order and that order is safe on PostgreSQL, where an
identity value is taken at INSERT and transactions commit in any order:
- Per aggregate: `append` takes the sequence number with an upsert of the aggregate's
  `outbox_sequences` row, which holds that row's lock until COMMIT; a second append of
  the same aggregate waits there, and inserts its row (taking its rowid) only after the
  first committed. So an aggregate's sequence numbers, rowids and commits are in one
  order, and any snapshot that shows its event N shows N-1 too. (The counter row is a
  row lock like any other: append after changing the aggregate's own rows, and append
  several aggregates' events in one order, so that no two writes wait for each other.)
- Across aggregates the order is not promised (a row with a lower rowid may commit
  later), and the relay needs none: it never pages with a cursor; every claim takes the
  oldest *pending* rows again, so a row committed late is simply in a later batch.
  (A keyset cursor would skip it: docs/postgres-concurrency.md, ListOrders.)

The relay's lease (`outbox_relay_lease`, one row) is the saga's lease over again
(services/order/store.py): taken by one conditional upsert, its expiry by the database's
clock, a new epoch at each change of hands, and every write of the relay fenced on
(owner, epoch): on PostgreSQL `FOR SHARE`, so a successor's acquire waits until a fenced
mark has committed, and a mark whose lease was taken meanwhile finds no row and marks
nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from services.common.database import Database, Row, Tx, clock

EnvelopeFor = Callable[[str, int, float], bytes]
"""Builds an event's envelope bytes from its (event_id, sequence, occurred_at)."""


@dataclass(frozen=True)
class Appended:
    """An event as `append` wrote it."""

    event_id: str
    aggregate_id: str
    sequence: int
    occurred_at: float


@dataclass(frozen=True)
class Pending:
    """An event not yet marked sent, as the relay publishes it."""

    event_id: str
    aggregate_id: str
    sequence: int
    subject: str
    envelope: bytes


@dataclass(frozen=True)
class RelayLease:
    """The right to publish from one outbox, held by one relay (`owner`) at a time; each
    change of hands takes a new `epoch`."""

    owner: str
    epoch: int


@dataclass(frozen=True)
class Backlog:
    """What waits to be published: how many events, and how long the oldest has waited
    (0 when none does)."""

    pending: int
    oldest_age_seconds: float


class LeaseLost(Exception):
    """Another relay holds the outbox's lease now: this one publishes and marks nothing."""

    def __init__(self, lease: RelayLease) -> None:
        super().__init__(f"outbox relay lease epoch {lease.epoch} of {lease.owner} is not held")
        self.lease = lease


async def append(
    tx: Tx,
    *,
    aggregate_id: str,
    subject: str,
    envelope_for: EnvelopeFor,
    event_id: str | None = None,
    now: float | None = None,
) -> Appended:
    """Writes one event of `aggregate_id` in the transaction `tx`: its next sequence
    number (from 1, no gaps), a fresh UUID unless `event_id` is given, and the envelope
    `envelope_for(event_id, sequence, occurred_at)` builds, published on `subject`.
    `now` is the time the caller's write works at (one clock read for both); else the
    database's. After the write commits, the caller wakes the relay (`Outbox.notify`)."""
    event_id = event_id or str(uuid.uuid4())
    at = await clock(tx, now)
    if isinstance(tx, EventsOff):
        return Appended(event_id, aggregate_id, 0, at)
    row = await tx.fetchone(
        "INSERT INTO outbox_sequences (aggregate_id, last_sequence) VALUES (?, 1)"
        " ON CONFLICT (aggregate_id) DO UPDATE"
        " SET last_sequence = outbox_sequences.last_sequence + 1"
        " RETURNING last_sequence",
        (aggregate_id,),
    )
    assert row is not None  # an upsert with RETURNING always returns its row
    sequence = int(row["last_sequence"])
    await put(
        tx,
        event_id=event_id,
        aggregate_id=aggregate_id,
        sequence=sequence,
        subject=subject,
        envelope=envelope_for(event_id, sequence, at),
        at=at,
    )
    return Appended(event_id, aggregate_id, sequence, at)


async def put(
    tx: Tx,
    *,
    event_id: str,
    aggregate_id: str,
    sequence: int,
    subject: str,
    envelope: bytes,
    at: float,
) -> None:
    """Writes one event whose sequence number the caller keeps itself (an event-sourced
    aggregate numbers its own log: services/order/store.py), in the transaction `tx`.
    The caller's transaction must hold a lock of the aggregate until it commits, as
    `append`'s counter row is held, so that the aggregate's rowids follow its commits."""
    if isinstance(tx, EventsOff):
        return
    await tx.execute(
        "INSERT INTO outbox (event_id, aggregate_id, sequence, subject, envelope, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (event_id, aggregate_id, sequence, subject, envelope, at),
    )


class EventsOff:
    """A write transaction of a store whose events are switched off (StoreConfig.events,
    `Store.write_events`): its own statements run as they are, but `append` and `put`
    write no outbox row (`append` returns sequence 0). The benchmark's "events off"."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx
        self.for_share = tx.for_share
        self.skip_locked = tx.skip_locked

    async def lock(self, key: str) -> None:
        await self._tx.lock(key)

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return await self._tx.execute(sql, params)

    async def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        await self._tx.executemany(sql, params)

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        return await self._tx.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return await self._tx.fetchall(sql, params)

    async def now(self) -> float:
        return await self._tx.now()


class Outbox:
    """One service database's outbox as the relay sees it: the lease, the pending
    events, marking and pruning; and the in-process signal that a commit appended."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._appended = asyncio.Event()

    def notify(self) -> None:
        """Wakes this process's relay: a write that appended events has committed."""
        self._appended.set()

    async def appended(self) -> None:
        """Returns once `notify` was called (at once if it was since the last return)."""
        await self._appended.wait()
        self._appended.clear()

    # The lease.

    async def acquire(
        self, owner: str, seconds: float, now: float | None = None
    ) -> RelayLease | None:
        """Takes the lease for `seconds`, with a new epoch, if nobody holds it (no lease,
        an expired one, or one `owner` held before); None if another relay holds it."""

        async def acquire(tx: Tx) -> RelayLease | None:
            # One statement, its condition on the lease row itself: two relays taking an
            # expired lease at once cannot both win (the second waits for the first's
            # row, then finds it held).
            at = await clock(tx, now)
            row = await tx.fetchone(
                "INSERT INTO outbox_relay_lease (id, owner, epoch, expires_at)"
                " VALUES (1, ?1, 1, ?2)"
                " ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,"
                " epoch = outbox_relay_lease.epoch + 1, expires_at = excluded.expires_at"
                " WHERE outbox_relay_lease.owner = excluded.owner"
                " OR outbox_relay_lease.expires_at <= ?3"
                " RETURNING epoch",
                (owner, at + seconds, at),
            )
            return None if row is None else RelayLease(owner, int(row["epoch"]))

        return await self.db.write(acquire)

    async def renew(self, lease: RelayLease, seconds: float, now: float | None = None) -> bool:
        """Extends the lease to `seconds` from now; False if it is no longer held."""

        async def renew(tx: Tx) -> bool:
            until = await clock(tx, now) + seconds
            return bool(
                await tx.execute(
                    "UPDATE outbox_relay_lease SET expires_at = ?"
                    " WHERE id = 1 AND owner = ? AND epoch = ?",
                    (until, lease.owner, lease.epoch),
                )
            )

        return await self.db.write(renew)

    async def release(self, lease: RelayLease) -> bool:
        """Gives the lease up (a relay that stops), so a standby takes it at once."""

        async def release(tx: Tx) -> bool:
            # Expired rather than deleted: the next holder still takes a higher epoch.
            return bool(
                await tx.execute(
                    "UPDATE outbox_relay_lease SET expires_at = 0"
                    " WHERE id = 1 AND owner = ? AND epoch = ?",
                    (lease.owner, lease.epoch),
                )
            )

        return await self.db.write(release)

    async def lease(self) -> tuple[RelayLease, float] | None:
        """The lease as stored (expired or not) and its expiry; None if none was taken."""
        row = await self.db.read(
            lambda tx: tx.fetchone(
                "SELECT owner, epoch, expires_at FROM outbox_relay_lease WHERE id = 1"
            )
        )
        if row is None:
            return None
        return RelayLease(row["owner"], int(row["epoch"])), float(row["expires_at"])

    # The events.

    async def pending(self, limit: int) -> list[Pending]:
        """The oldest `limit` events not marked sent, oldest first (see the module's
        docstring for why this order keeps each aggregate's)."""
        found = await self.db.read(
            lambda tx: tx.fetchall(
                "SELECT event_id, aggregate_id, sequence, subject, envelope FROM outbox"
                " WHERE sent_at IS NULL ORDER BY rowid LIMIT ?",
                (limit,),
            )
        )
        return [
            Pending(
                r["event_id"],
                r["aggregate_id"],
                int(r["sequence"]),
                r["subject"],
                bytes(r["envelope"]),
            )
            for r in found
        ]

    async def mark_sent(
        self, lease: RelayLease, event_ids: Sequence[str], now: float | None = None
    ) -> int:
        """Marks the events sent, in one statement, if `lease` is still the outbox's;
        returns how many it marked. LeaseLost (and nothing marked) if another relay holds
        the lease now."""
        if not event_ids:
            return 0

        async def mark(tx: Tx) -> int:
            await _fence(tx, lease)
            return await tx.execute(
                f"UPDATE outbox SET sent_at = ? WHERE sent_at IS NULL"
                f" AND event_id IN ({', '.join('?' for _ in event_ids)})",
                (await clock(tx, now), *event_ids),
            )

        return await self.db.write(mark)

    async def prune(
        self, lease: RelayLease, retention_seconds: float, limit: int, now: float | None = None
    ) -> int:
        """Deletes up to `limit` events sent more than `retention_seconds` ago, under the
        lease (only the relay holding it prunes, so no two pruners meet); returns how
        many. Pending events are never deleted, nor the aggregates' sequence counters."""

        async def prune(tx: Tx) -> int:
            await _fence(tx, lease)
            return await tx.execute(
                "DELETE FROM outbox WHERE event_id IN (SELECT event_id FROM outbox"
                " WHERE sent_at IS NOT NULL AND sent_at < ? LIMIT ?)",
                (await clock(tx, now) - retention_seconds, limit),
            )

        return await self.db.write(prune)

    async def backlog(self, now: float | None = None) -> Backlog:
        """How many events wait, and for how long the oldest has (for metrics)."""

        async def read(tx: Tx) -> Backlog:
            row = await tx.fetchone(
                "SELECT count(*) AS pending, min(created_at) AS oldest FROM outbox"
                " WHERE sent_at IS NULL"
            )
            assert row is not None  # an aggregate always has its row
            if not row["pending"]:
                return Backlog(0, 0.0)
            return Backlog(int(row["pending"]), max(0.0, await clock(tx, now) - row["oldest"]))

        return await self.db.read(read, snapshot=True)


async def _fence(tx: Tx, lease: RelayLease) -> None:
    """Raises LeaseLost unless `lease` is the outbox's lease now (owner and epoch)."""
    # FOR SHARE on a server database: a relay taking the lease over (acquire updates this
    # row) waits until this write has committed.
    held = await tx.fetchone(
        "SELECT 1 FROM outbox_relay_lease WHERE id = 1 AND owner = ? AND epoch = ?" + tx.for_share,
        (lease.owner, lease.epoch),
    )
    if held is None:
        raise LeaseLost(lease)
