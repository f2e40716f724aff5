"""Order's store: orders, their line items, and the saga record beside each.

Every saga transition is a conditional UPDATE (`WHERE phase = <expected>`), made under
the saga's lease (`saga_leases`: owner, epoch, expiry): one instance drives a saga at a
time, another adopts it only once the lease has expired, taking a new epoch, and a write
under an older epoch raises LeaseLost (fencing: an owner paused past its lease cannot
write after its successor). Creating an order writes the order, its saga record and its
first lease in one transaction, so no order exists without a saga to finish it.

Every time the store writes or compares (lease expiry, an order's times, the quota's
window, retention) is the database's (`Tx.now`: on SQLite every instance shares one host
and its clock; a server database compares with its own), never the calling instance's;
the `now` arguments exist so that tests can set the time.

On PostgreSQL several instances run these transactions at once under READ COMMITTED;
docs/postgres-concurrency.md says why each statement is written as it is (a user's orders
are created under a lock of that user's, the lease is taken by one conditional upsert,
the fence locks the lease row until the write commits).

Each order has an event log (`order_events`): every saga transition appends its fact, in
a full shop.events.v1.EventEnvelope, in the same transaction as the transition itself
(`_append_event`, the one place that does), so the log holds exactly the transitions that
committed, and replaying it rebuilds the order's row (services.order.history). Every
transition but create first updates the order's saga row, which on PostgreSQL locks it
until the commit: two transitions of one order (a user's cancel and a saga step) take
their sequence numbers one after the other, never the same one.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from services.common import db, outbox
from services.common.database import Row, Tx, clock
from services.common.errors import ErrorKind, ServiceError, already_exists, not_found
from services.order import events
from services.order.domain import (
    CANCELLABLE_PHASES,
    CANCELLED_BY_USER,
    DECLINE_REASONS,
    FINAL_PHASES,
    Lease,
    LeaseLost,
    LineItem,
    Order,
    OrderState,
    ParkedSaga,
    Phase,
    Quota,
    Saga,
    decode_failure,
    encode_failure,
    fingerprint,
    same_request,
)
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_events_pb2 as facts

# SQL's spelling of DECLINE_REASONS, the same in the partial index orders_declined
# (migrations/0001_initial.sql) and in the query that must match it to use it.
_DECLINED = "cancel_reason IN ({})".format(", ".join(f"'{r}'" for r in DECLINE_REASONS))


def _order_not_found(order_id: str) -> ServiceError:
    return not_found("ORDER_NOT_FOUND", f"no order {order_id!r}", order_id=order_id)


def _placeholders(values: Iterable[object]) -> str:
    return ", ".join("?" for _ in values)


ALL = -1
"""A `limit` of no limit."""


def _limit(limit: int) -> int:
    # LIMIT -1 is SQLite's "no limit", an error on PostgreSQL; LIMIT NULL the reverse.
    return 2**62 if limit == ALL else limit


_OPEN_PHASES = tuple(p.value for p in Phase if p not in FINAL_PHASES)
# The open phases as placeholders ?5, ?6, ...: `acquire` numbers its first four (?1-?4),
# and a bare `?` after them would take SQLite's next number, not the phases' own.
_OPEN_PHASES_FROM_5 = ", ".join(f"?{5 + n}" for n in range(len(_OPEN_PHASES)))


class OrderStore(db.Store):
    service = "order"

    # Orders.

    async def create(
        self,
        order_id: str,
        user_id: str,
        request_id: str,
        items: tuple[LineItem, ...],
        now: float | None = None,
        *,
        lease: Lease | None = None,
        lease_seconds: float = 0.0,
        quota: Quota | None = None,
    ) -> tuple[Order, bool]:
        """Persists a PENDING order and its saga (under `lease` for `lease_seconds`, if
        given), or returns the one the request id made.

        Returns (order, created). ALREADY_EXISTS if the request id made a different order;
        RESOURCE_EXHAUSTED if a new one would break the user's `quota` (a repeat of an
        existing request id never does).
        """
        wanted = fingerprint(items)

        async def create(tx: Tx) -> tuple[Order, bool]:
            # One user's creates one at a time, on every instance: a repeat of the request
            # id then finds the first's order, the quota counts orders nobody else is
            # adding, and a user's seqs follow commit order (ListOrders' keyset).
            await tx.lock(f"user:{user_id}")
            row = await tx.fetchone(
                "SELECT order_id, fingerprint FROM orders WHERE user_id = ? AND request_id = ?",
                (user_id, request_id),
            )
            if row is not None:
                if not same_request(row["fingerprint"], items):
                    raise already_exists(
                        "REQUEST_ID_REUSED",
                        "this request_id was already used for an order with other line items",
                        request_id=request_id,
                        order_id=row["order_id"],
                    )
                return await _read_order(tx, row["order_id"]), False
            at = await clock(tx, now)
            if quota is not None:
                await _check_quota(tx, user_id, quota, at)
            await tx.execute(
                "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (order_id, user_id, request_id, wanted, OrderState.PENDING.value, at, at),
            )
            await tx.executemany(
                "INSERT INTO order_items (order_id, position, sku, quantity) VALUES (?, ?, ?, ?)",
                [(order_id, n, i.sku, i.quantity) for n, i in enumerate(items)],
            )
            await tx.execute(
                "INSERT INTO sagas (order_id, phase, updated_at) VALUES (?, ?, ?)",
                (order_id, Phase.STARTED.value, at),
            )
            if lease is not None:
                await tx.execute(
                    "INSERT INTO saga_leases (order_id, owner, epoch, expires_at)"
                    " VALUES (?, ?, ?, ?)",
                    (order_id, lease.owner, lease.epoch, at + lease_seconds),
                )
            await _append_event(tx, order_id, events.placed(order_id, user_id, items), at)
            return await _read_order(tx, order_id), True

        return await self.write_events(create)

    async def order(self, order_id: str, user_id: str | None = None) -> Order:
        """The order; NOT_FOUND if none, or if it is another user's."""
        found = await self.db.read(lambda tx: _read_order(tx, order_id))
        if user_id is not None and found.user_id != user_id:
            raise _order_not_found(order_id)
        return found

    async def answer(self, order_id: str) -> Order:
        """What CreateOrder answers: the order, or, if its saga cancelled it (not the user),
        the saga's failure with the order's id, so that a repeat gets the same answer."""

        rows = await self.db.read(lambda tx: tx.fetchall(_ORDER_AND_FAILURE, (order_id,)))
        order = _order_from_rows(rows, order_id)
        failure = decode_failure(rows[0]["saga_failure"] or "")
        if (
            order.state is OrderState.CANCELLED
            and order.cancel_reason != CANCELLED_BY_USER
            and failure is not None
        ):
            raise ServiceError(
                failure.kind,
                failure.reason,
                failure.message,
                metadata={**failure.metadata, "order_id": order_id},
                violations=failure.violations,
            )
        return order

    async def orders(self, user_id: str, before_seq: int | None, limit: int) -> list[Order]:
        """The user's orders, newest first, older than `before_seq` if given."""

        async def read(tx: Tx) -> list[Order]:
            rows = await tx.fetchall(
                "SELECT order_id FROM orders WHERE user_id = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (user_id, before_seq if before_seq is not None else 2**62, limit),
            )
            return [await _read_order(tx, r["order_id"]) for r in rows]

        return await self.db.read(read, snapshot=True)

    async def prunable(self, retention_seconds: float, now: float | None = None) -> bool:
        """Whether some CANCELLED order ended more than `retention_seconds` ago (see
        `prune`)."""

        async def read(tx: Tx) -> bool:
            before = await clock(tx, now) - retention_seconds
            return bool(
                await tx.fetchone(
                    "SELECT 1 FROM sagas WHERE phase = ? AND updated_at < ? LIMIT 1",
                    (Phase.CANCELLED.value, before),
                )
            )

        return await self.db.read(read)

    async def prune(
        self, retention_seconds: float, now: float | None = None, limit: int = 1000
    ) -> int:
        """Deletes up to `limit` CANCELLED orders (all their rows) that ended more than
        `retention_seconds` ago; returns how many. Confirmed orders are the shop's record
        and stay. Their request ids are forgotten with them: a repeat after that places a
        new order."""

        async def prune(tx: Tx) -> int:
            before = await clock(tx, now) - retention_seconds
            ids = [
                (r["order_id"],)
                for r in await tx.fetchall(
                    "SELECT order_id FROM sagas WHERE phase = ? AND updated_at < ?"
                    f" ORDER BY updated_at LIMIT ?{tx.skip_locked}",
                    (Phase.CANCELLED.value, before, limit),
                )
            ]
            tables = ("order_events", "order_items", "saga_leases", "parked_sagas", "sagas")
            for table in (*tables, "orders"):
                await tx.executemany(f"DELETE FROM {table} WHERE order_id = ?", ids)
            return len(ids)

        return await self.db.write(prune)

    # The order's event log.

    async def events(
        self, order_id: str, user_id: str | None = None, after: int = 0, limit: int = ALL
    ) -> list[envelope_pb2.EventEnvelope]:
        """The order's log, oldest first: the entries after sequence `after`, at most
        `limit` (ALL: all). NOT_FOUND if there is no such order, or it is another user's."""
        owner = " AND orders.user_id = ?" if user_id is not None else ""
        rows = await self.db.read(
            lambda tx: tx.fetchall(
                "SELECT order_events.envelope FROM order_events"
                " JOIN orders ON orders.order_id = order_events.order_id"
                f" WHERE order_events.order_id = ?{owner} AND order_events.sequence > ?"
                " ORDER BY order_events.sequence LIMIT ?",
                (order_id, *([user_id] if user_id is not None else []), after, _limit(limit)),
            )
        )
        if not rows:
            await self.order(order_id, user_id)  # NOT_FOUND, or an order with no more
        return [envelope_pb2.EventEnvelope.FromString(bytes(r["envelope"])) for r in rows]

    # The saga record.

    async def saga(self, order_id: str) -> Saga:
        return await self.db.read(lambda tx: _read_saga(tx, order_id))

    async def saga_and_order(self, order_id: str) -> tuple[Saga, Order]:
        """The saga and its order at one moment, in one statement: what the saga's driver
        reads before each step (on a server database one round trip, not two)."""
        rows = await self.db.read(lambda tx: tx.fetchall(_ORDER_AND_SAGA, (order_id,)))
        order = _order_from_rows(rows, order_id)
        return _saga_from_row(rows[0], prefix="saga_"), order

    async def open_sagas(self, limit: int = ALL, now: float | None = None) -> list[str]:
        """Ids of sagas nobody drives: not final, not parked, and with no lease or an
        expired one; oldest first, at most `limit` (ALL: all)."""

        # `phase IN (open phases)`, not `NOT IN (finals)`: IN walks the (phase, updated_at)
        # index; NOT IN scanned every saga ever made (4 ms at 50k orders, every interval).
        async def read(tx: Tx) -> list[str]:
            rows = await tx.fetchall(
                "SELECT sagas.order_id FROM sagas LEFT JOIN saga_leases USING (order_id)"
                f" WHERE phase IN ({_placeholders(_OPEN_PHASES)})"
                " AND (saga_leases.expires_at IS NULL OR saga_leases.expires_at <= ?)"
                " AND sagas.order_id NOT IN (SELECT order_id FROM parked_sagas)"
                " ORDER BY sagas.updated_at LIMIT ?",
                (*_OPEN_PHASES, await clock(tx, now), _limit(limit)),
            )
            return [r["order_id"] for r in rows]

        return await self.db.read(read)

    # Leases: who drives a saga.

    async def acquire(
        self, order_id: str, owner: str, seconds: float, now: float | None = None
    ) -> Lease | None:
        """Takes the saga's lease for `seconds`, with a new epoch, if nobody holds it (no
        lease, an expired one, or one `owner` held before); None if another instance does,
        or if the saga is final. NOT_FOUND if there is no such saga."""

        async def acquire(tx: Tx) -> Lease | None:
            # One statement, its condition on the lease row itself: two instances taking
            # an expired lease at once cannot both win (the second waits for the first's
            # row, then finds it held). Only an open saga gets a lease.
            at = await clock(tx, now)
            row = await tx.fetchone(
                "INSERT INTO saga_leases (order_id, owner, epoch, expires_at)"
                " SELECT order_id, ?1, 1, ?2 FROM sagas"
                f" WHERE order_id = ?3 AND phase IN ({_OPEN_PHASES_FROM_5})"
                " ON CONFLICT (order_id) DO UPDATE SET owner = excluded.owner,"
                " epoch = saga_leases.epoch + 1, expires_at = excluded.expires_at"
                " WHERE saga_leases.owner = excluded.owner OR saga_leases.expires_at <= ?4"
                " RETURNING epoch",
                (owner, at + seconds, order_id, at, *_OPEN_PHASES),
            )
            if row is None:
                await _read_saga(tx, order_id)  # NOT_FOUND if there is no such saga
                return None
            # The upsert chose the saga by its statement's snapshot: a finish that committed
            # while it waited for the lease row (and deleted that row) is seen only by the
            # next statement, and the upsert then inserted a lease, at epoch 1, for a final
            # saga. A final saga needs none: give it back.
            if (await _read_saga(tx, order_id)).phase in FINAL_PHASES:
                await tx.execute("DELETE FROM saga_leases WHERE order_id = ?", (order_id,))
                return None
            return Lease(order_id, owner, row["epoch"])

        return await self.db.write(acquire)

    async def renew(self, lease: Lease, seconds: float, now: float | None = None) -> bool:
        """Extends the lease to `seconds` from now; False if it is no longer held (another
        epoch)."""
        return bool(await self.renew_all([lease], seconds, now))

    async def renew_all(
        self, leases: Sequence[Lease], seconds: float, now: float | None = None
    ) -> set[Lease]:
        """Extends each lease still held to `seconds` from now, in one transaction; returns
        those."""

        async def renew(tx: Tx) -> set[Lease]:
            until = await clock(tx, now) + seconds
            return {
                lease
                for lease in leases
                if await tx.execute(
                    "UPDATE saga_leases SET expires_at = ?"
                    " WHERE order_id = ? AND owner = ? AND epoch = ?",
                    (until, lease.order_id, lease.owner, lease.epoch),
                )
            }

        return await self.db.write(renew)

    async def release(self, leases: Sequence[Lease]) -> int:
        """Gives the leases up (an instance that stops), so others adopt at once."""

        async def release(tx: Tx) -> int:
            return sum([await _release(tx, lease) for lease in leases])

        return await self.db.write(release)

    async def lease(self, order_id: str) -> Lease | None:
        """The saga's lease as stored (expired or not); None if it has none."""
        row = await self.db.read(
            lambda tx: tx.fetchone(
                "SELECT owner, epoch FROM saga_leases WHERE order_id = ?", (order_id,)
            )
        )
        return Lease(order_id, row["owner"], row["epoch"]) if row else None

    # Parked sagas: driven no more until an operator resumes them.

    async def park(
        self, lease: Lease, phase: Phase, reason: str, detail: str, now: float | None = None
    ) -> bool:
        """Stops driving the saga, if it is still in `phase` and not parked already; its
        lease is given up, so any instance may drive it once an operator resumes it."""

        async def park(tx: Tx) -> bool:
            # Parks one at a time, so that their rowids follow commit order: a page of
            # ListParkedOrders never skips one committed late under a lower rowid.
            await tx.lock("parked_sagas")
            await _fence(tx, lease)
            parked = await tx.execute(
                "INSERT INTO parked_sagas (order_id, phase, reason, detail, parked_at)"
                " SELECT order_id, phase, CAST(? AS TEXT), CAST(? AS TEXT),"
                " CAST(? AS DOUBLE PRECISION) FROM sagas WHERE order_id = ? AND phase = ?"
                " ON CONFLICT DO NOTHING",
                (reason, detail, await clock(tx, now), lease.order_id, phase.value),
            )
            if parked:
                await _release(tx, lease)
            return bool(parked)

        return await self.db.write(park)

    async def unpark(self, order_id: str) -> bool:
        """Lets the saga be driven again; False if it was not parked."""

        async def unpark(tx: Tx) -> bool:
            return bool(
                await tx.execute("DELETE FROM parked_sagas WHERE order_id = ?", (order_id,))
            )

        return await self.db.write(unpark)

    async def parked(self, after_seq: int = 0, limit: int = ALL) -> list[ParkedSaga]:
        """Parked sagas, oldest first, after `after_seq` (a ParkedSaga's seq); at most
        `limit` of them (ALL: all)."""
        rows = await self.db.read(
            lambda tx: tx.fetchall(
                "SELECT parked_sagas.rowid AS seq, parked_sagas.*, orders.user_id"
                " FROM parked_sagas JOIN orders USING (order_id)"
                " WHERE parked_sagas.rowid > ? ORDER BY parked_sagas.rowid LIMIT ?",
                (after_seq, _limit(limit)),
            )
        )
        return [
            ParkedSaga(
                order_id=r["order_id"],
                user_id=r["user_id"],
                phase=Phase(r["phase"]),
                reason=r["reason"],
                detail=r["detail"],
                parked_at=r["parked_at"],
                seq=r["seq"],
            )
            for r in rows
        ]

    async def record_reserved(
        self, lease: Lease, items: Sequence[LineItem], currency: str, now: float | None = None
    ) -> bool:
        """STARTED -> RESERVED, with the prices the hold fixed and the order's total."""
        order_id = lease.order_id
        total = sum((i.price_minor or 0) * i.quantity for i in items)

        async def record(tx: Tx) -> bool:
            await _fence(tx, lease)
            at = await clock(tx, now)
            if not await _move(tx, order_id, (Phase.STARTED,), Phase.RESERVED, at):
                return False
            await tx.executemany(
                "UPDATE order_items SET price_minor = ?, currency = ?"
                " WHERE order_id = ? AND sku = ?",
                [(i.price_minor, i.currency, order_id, i.sku) for i in items],
            )
            await tx.execute(
                "UPDATE orders SET total_minor = ?, currency = ?, updated_at = ?"
                " WHERE order_id = ?",
                (total, currency, at, order_id),
            )
            await _append_event(tx, order_id, events.reserved(order_id, items, total, currency), at)
            return True

        return await self.write_events(record)

    async def advance(
        self, lease: Lease, before: Phase, after: Phase, now: float | None = None
    ) -> bool:
        """Moves the saga from `before` to `after`, AUTHORIZED or COMMITTING (the other
        moves have store methods of their own); to the pivot only if no cancel was asked
        for."""
        order_id = lease.order_id
        fact = _advanced(order_id, after)

        async def advance(tx: Tx) -> bool:
            await _fence(tx, lease)
            at = await clock(tx, now)
            if after is Phase.COMMITTING:
                moved = bool(
                    await tx.execute(
                        "UPDATE sagas SET phase = ?, updated_at = ?"
                        " WHERE order_id = ? AND phase = ? AND cancel_requested = 0",
                        (after.value, at, order_id, before.value),
                    )
                )
            else:
                moved = await _move(tx, order_id, (before,), after, at)
            if moved:
                await _append_event(tx, order_id, fact, at)
            return moved

        return await self.write_events(advance)

    async def begin_compensation(
        self, lease: Lease, before: Phase, failure: ServiceError, now: float | None = None
    ) -> bool:
        """Decides to cancel: the saga compensates from `before`, for `failure`'s reason."""
        order_id = lease.order_id

        async def begin(tx: Tx) -> bool:
            await _fence(tx, lease)
            at = await clock(tx, now)
            begun = await tx.execute(
                "UPDATE sagas SET phase = ?, compensate_from = ?, failure = ?, updated_at = ?"
                " WHERE order_id = ? AND phase = ?",
                (
                    Phase.COMPENSATING.value,
                    before.value,
                    encode_failure(failure),
                    at,
                    order_id,
                    before.value,
                ),
            )
            if begun:
                fact = facts.OrderCompensating(order_id=order_id, cancel_reason=failure.reason)
                await _append_event(tx, order_id, fact, at)
            return bool(begun)

        return await self.write_events(begin)

    async def finish(self, lease: Lease, before: Phase, now: float | None = None) -> bool:
        """The last step: CONFIRMED from COMMITTING, CANCELLED from COMPENSATING; a final
        saga needs no lease, so it goes."""
        order_id = lease.order_id
        final = Phase.CONFIRMED if before is Phase.COMMITTING else Phase.CANCELLED

        async def finish(tx: Tx) -> bool:
            await _fence(tx, lease)
            at = await clock(tx, now)
            if not await _move(tx, order_id, (before,), final, at):
                return False
            # Final: no write follows, so the lease row can go.
            await tx.execute("DELETE FROM saga_leases WHERE order_id = ?", (order_id,))
            # The order as it ends (for its final fact) and the saga's failure: one read.
            rows = await tx.fetchall(_ORDER_AND_FAILURE, (order_id,))
            order = _order_from_rows(rows, order_id)
            reason = ""
            if final is Phase.CANCELLED:
                failure = decode_failure(rows[0]["saga_failure"] or "")
                reason = failure.reason if failure is not None else ""
            state = OrderState(final.value)
            await tx.execute(
                "UPDATE orders SET state = ?, cancel_reason = ?, updated_at = ? WHERE order_id = ?",
                (state.value, reason, at, order_id),
            )
            await _append_event(tx, order_id, events.final(order, state, reason), at)
            return True

        return await self.write_events(finish)

    async def request_cancel(self, order_id: str, now: float | None = None) -> bool:
        """Asks a saga that has not passed its pivot to cancel; False if it has."""
        phases = [p.value for p in CANCELLABLE_PHASES]

        async def request(tx: Tx) -> bool:
            at = await clock(tx, now)
            if await tx.execute(
                "UPDATE sagas SET cancel_requested = 1, updated_at = ?"
                f" WHERE order_id = ? AND phase IN ({_placeholders(phases)})"
                " AND cancel_requested = 0",
                (at, order_id, *phases),
            ):
                await _append_event(tx, order_id, facts.OrderCancelRequested(order_id=order_id), at)
                return True
            # Asked before: the request stands (one entry in the log), if it still can.
            still = f"SELECT 1 FROM sagas WHERE order_id = ? AND phase IN ({_placeholders(phases)})"
            return bool(await tx.fetchone(still, (order_id, *phases)))

        return await self.write_events(request)


@dataclass(frozen=True)
class _Head:
    """What an order's next log entry needs from the database."""

    request_id: str
    sequence: int


async def _append_event(
    tx: Tx, order_id: str, fact: Message, at: float
) -> envelope_pb2.EventEnvelope:
    """Appends `fact` to the order's log in the transaction `tx` (the transition's own), in
    its envelope: a new event id, the order's next sequence number (from 1, no gaps: the
    caller's transaction holds the order's saga row, or, in create, the new order's),
    `at` (the transition's database time) and the order's request id. The one place an
    order's event is written; returns the envelope written."""
    row = await tx.fetchone(
        "SELECT request_id, (SELECT COALESCE(MAX(sequence), 0) FROM order_events"
        " WHERE order_id = orders.order_id) + 1 AS next_sequence FROM orders WHERE order_id = ?",
        (order_id,),
    )
    if row is None:
        raise _order_not_found(order_id)
    head = _Head(row["request_id"], int(row["next_sequence"]))
    entry = events.envelope(
        fact,
        event_id=str(uuid.uuid4()),
        sequence=head.sequence,
        occurred_at=at,
        request_id=head.request_id,
    )
    data = entry.SerializeToString()
    await tx.execute(
        "INSERT INTO order_events (order_id, sequence, event_id, type, occurred_at, envelope)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (order_id, head.sequence, entry.event_id, entry.type, at, data),
    )
    # The same event, for the relay to publish: the log keeps it for good, the outbox
    # until it is sent and past the retention.
    await outbox.put(
        tx,
        event_id=entry.event_id,
        aggregate_id=order_id,
        sequence=head.sequence,
        subject=entry.type,
        envelope=data,
        at=at,
    )
    return entry


def _advanced(order_id: str, after: Phase) -> Message:
    """The fact of a move by `advance`: to the pivot, or authorized while a cancel waits."""
    if after is Phase.COMMITTING:
        return facts.OrderCommitting(order_id=order_id)
    if after is Phase.AUTHORIZED:
        return facts.OrderPaymentAuthorized(order_id=order_id)
    raise ValueError(f"advance does not move a saga to {after.value}")


def _order_query(extra: str = "", join: str = "") -> str:
    """The SELECT of one order and its items in one statement (a row per item), so it
    sees one moment on either backend with no snapshot transaction around it: on a server
    database each statement is a round trip, and as two SELECTs in a snapshot a read took
    four (BEGIN, the two, COMMIT). `extra` columns come from the tables `join` adds."""
    return (
        "SELECT orders.*, order_items.sku AS item_sku, order_items.quantity AS item_quantity,"
        " order_items.price_minor AS item_price_minor, order_items.currency AS item_currency"
        f"{extra} FROM orders LEFT JOIN order_items ON order_items.order_id = orders.order_id"
        f"{join} WHERE orders.order_id = ? ORDER BY order_items.position"
    )


_ORDER = _order_query()
_ORDER_AND_SAGA = _order_query(
    ", sagas.order_id AS saga_order_id, sagas.phase AS saga_phase,"
    " sagas.compensate_from AS saga_compensate_from,"
    " sagas.cancel_requested AS saga_cancel_requested, sagas.failure AS saga_failure,"
    " parked_sagas.order_id IS NOT NULL AS saga_parked",
    " JOIN sagas ON sagas.order_id = orders.order_id"
    " LEFT JOIN parked_sagas ON parked_sagas.order_id = orders.order_id",
)
# CreateOrder's answer also needs the saga's failure: the same one statement.
_ORDER_AND_FAILURE = _order_query(
    ", sagas.failure AS saga_failure", " LEFT JOIN sagas ON sagas.order_id = orders.order_id"
)


async def _read_order(tx: Tx, order_id: str) -> Order:
    return _order_from_rows(await tx.fetchall(_ORDER, (order_id,)), order_id)


def _order_from_rows(rows: Sequence[Row], order_id: str) -> Order:
    if not rows:
        raise _order_not_found(order_id)
    row = rows[0]
    return Order(
        order_id=row["order_id"],
        user_id=row["user_id"],
        request_id=row["request_id"],
        items=tuple(
            LineItem(i["item_sku"], i["item_quantity"], i["item_price_minor"], i["item_currency"])
            for i in rows
            if i["item_sku"] is not None
        ),
        state=OrderState(row["state"]),
        cancel_reason=row["cancel_reason"],
        total_minor=row["total_minor"],
        currency=row["currency"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        seq=row["seq"],
    )


async def _read_saga(tx: Tx, order_id: str) -> Saga:
    # The parked flag in the same read: the saga's driver looks at both before each step.
    row = await tx.fetchone(
        "SELECT sagas.*, parked_sagas.order_id IS NOT NULL AS parked FROM sagas"
        " LEFT JOIN parked_sagas USING (order_id) WHERE order_id = ?",
        (order_id,),
    )
    if row is None:
        raise _order_not_found(order_id)
    return _saga_from_row(row)


def _saga_from_row(row: Row, prefix: str = "") -> Saga:
    """The saga of a row whose saga columns are named `prefix` + the sagas column."""
    compensate_from = row[f"{prefix}compensate_from"]
    return Saga(
        order_id=row[f"{prefix}order_id"],
        phase=Phase(row[f"{prefix}phase"]),
        compensate_from=Phase(compensate_from) if compensate_from else None,
        cancel_requested=bool(row[f"{prefix}cancel_requested"]),
        failure=decode_failure(row[f"{prefix}failure"]),
        parked=bool(row[f"{prefix}parked"]),
    )


async def _check_quota(tx: Tx, user_id: str, quota: Quota, now: float) -> None:
    open_row = await tx.fetchone(
        "SELECT COUNT(*) FROM orders WHERE user_id = ? AND state = 'PENDING'", (user_id,)
    )
    assert open_row is not None
    open_orders = open_row[0]
    if open_orders >= quota.max_open_orders:
        raise ServiceError(
            ErrorKind.RESOURCE_EXHAUSTED,
            "TOO_MANY_OPEN_ORDERS",
            f"you have {open_orders} orders in progress, the most one user may have at once;"
            " place this one when one of them is done",
            metadata={"limit": str(quota.max_open_orders)},
        )
    declines_since = now - quota.decline_window_seconds
    declined = await tx.fetchone(
        "SELECT COUNT(*), MIN(updated_at) FROM orders WHERE user_id = ? AND updated_at > ?"
        f" AND {_DECLINED}",
        (user_id, declines_since),
    )
    assert declined is not None
    if declined[0] >= quota.max_declines:
        # Refused until the oldest decline counted leaves the window.
        retry_after = max(1, math.ceil(declined[1] - declines_since))
        raise ServiceError(
            ErrorKind.RESOURCE_EXHAUSTED,
            "TOO_MANY_DECLINED_ORDERS",
            f"{declined[0]} of your recent orders could not be paid for; new orders are"
            f" refused for {retry_after} s (check your balance first)",
            metadata={"limit": str(quota.max_declines), "retry_after_seconds": str(retry_after)},
        )


async def _fence(tx: Tx, lease: Lease) -> None:
    """Raises LeaseLost unless `lease` is the saga's lease now (owner and epoch)."""
    # FOR SHARE on a server database: an instance adopting the saga (acquire updates
    # this row) waits until this write has committed, so no write of an old epoch lands
    # after the new one began.
    held = await tx.fetchone(
        "SELECT 1 FROM saga_leases WHERE order_id = ? AND owner = ? AND epoch = ?" + tx.for_share,
        (lease.order_id, lease.owner, lease.epoch),
    )
    if held is None:
        raise LeaseLost(lease)


async def _release(tx: Tx, lease: Lease) -> int:
    # Expired at once rather than deleted: the next holder still takes a higher epoch.
    return await tx.execute(
        "UPDATE saga_leases SET expires_at = 0 WHERE order_id = ? AND owner = ? AND epoch = ?",
        (lease.order_id, lease.owner, lease.epoch),
    )


async def _move(tx: Tx, order_id: str, before: Sequence[Phase], after: Phase, now: float) -> bool:
    values = [p.value for p in before]
    return bool(
        await tx.execute(
            "UPDATE sagas SET phase = ?, updated_at = ?"
            f" WHERE order_id = ? AND phase IN ({_placeholders(values)})",
            (after.value, now, order_id, *values),
        )
    )
