"""Order's SQLite store: orders, their line items, and the saga record beside each.

Every saga transition is a conditional UPDATE (`WHERE phase = <expected>`), made under
the saga's lease (`saga_leases`: owner, epoch, expiry): one instance drives a saga at a
time, another adopts it only once the lease has expired, taking a new epoch, and a write
under an older epoch raises LeaseLost (fencing: an owner paused past its lease cannot
write after its successor). Creating an order writes the order, its saga record and its
first lease in one transaction, so no order exists without a saga to finish it.

Lease expiry is compared with the clock of the process that reads it (`now` arguments):
on SQLite every instance shares one host and its clock. The lease is its own table, with
the expiry a plain timestamp, so a server database can compare it with its own clock
instead (`now()`), leaving the instances' clocks out of it.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Sequence

from services.common import db
from services.common.errors import ErrorKind, ServiceError, already_exists, not_found
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

# SQL's spelling of DECLINE_REASONS, the same in the partial index orders_declined
# (migrations/0001_initial.sql) and in the query that must match it to use it.
_DECLINED = "cancel_reason IN ({})".format(", ".join(f"'{r}'" for r in DECLINE_REASONS))


def _order_not_found(order_id: str) -> ServiceError:
    return not_found("ORDER_NOT_FOUND", f"no order {order_id!r}", order_id=order_id)


def _placeholders(values: Iterable[object]) -> str:
    return ", ".join("?" for _ in values)


class OrderStore(db.Store):
    service = "order"

    # Orders.

    @db.batched
    def create(
        self,
        order_id: str,
        user_id: str,
        request_id: str,
        items: tuple[LineItem, ...],
        now: float,
        *,
        lease: Lease | None = None,
        lease_until: float = 0.0,
        quota: Quota | None = None,
    ) -> tuple[Order, bool]:
        """Persists a PENDING order and its saga (under `lease` until `lease_until`, if
        given), or returns the one the request id made.

        Returns (order, created). ALREADY_EXISTS if the request id made a different order;
        RESOURCE_EXHAUSTED if a new one would break the user's `quota` (a repeat of an
        existing request id never does).
        """
        wanted = fingerprint(items)
        with db.transaction(self._conn) as conn:
            row = conn.execute(
                "SELECT order_id, fingerprint FROM orders WHERE user_id = ? AND request_id = ?",
                (user_id, request_id),
            ).fetchone()
            if row is not None:
                if not same_request(row["fingerprint"], items):
                    raise already_exists(
                        "REQUEST_ID_REUSED",
                        "this request_id was already used for an order with other line items",
                        request_id=request_id,
                        order_id=row["order_id"],
                    )
                return self._read_order(conn, row["order_id"]), False
            if quota is not None:
                _check_quota(conn, user_id, quota)
            conn.execute(
                "INSERT INTO orders (order_id, user_id, request_id, fingerprint, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (order_id, user_id, request_id, wanted, OrderState.PENDING.value, now, now),
            )
            conn.executemany(
                "INSERT INTO order_items (order_id, position, sku, quantity) VALUES (?, ?, ?, ?)",
                [(order_id, n, i.sku, i.quantity) for n, i in enumerate(items)],
            )
            conn.execute(
                "INSERT INTO sagas (order_id, phase, updated_at) VALUES (?, ?, ?)",
                (order_id, Phase.STARTED.value, now),
            )
            if lease is not None:
                conn.execute(
                    "INSERT INTO saga_leases (order_id, owner, epoch, expires_at)"
                    " VALUES (?, ?, ?, ?)",
                    (order_id, lease.owner, lease.epoch, lease_until),
                )
            return self._read_order(conn, order_id), True

    def order(self, order_id: str, user_id: str | None = None) -> Order:
        """The order; NOT_FOUND if none, or if it is another user's."""
        with db.snapshot(self._reads) as conn:
            found = self._read_order(conn, order_id)
        if user_id is not None and found.user_id != user_id:
            raise _order_not_found(order_id)
        return found

    def answer(self, order_id: str) -> Order:
        """What CreateOrder answers: the order, or, if its saga cancelled it (not the user),
        the saga's failure with the order's id, so that a repeat gets the same answer."""
        with db.snapshot(self._reads) as conn:
            order = self._read_order(conn, order_id)
            failure = _read_saga(conn, order_id).failure
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

    def orders(self, user_id: str, before_seq: int | None, limit: int) -> list[Order]:
        """The user's orders, newest first, older than `before_seq` if given."""
        with db.snapshot(self._reads) as conn:
            rows = conn.execute(
                "SELECT order_id FROM orders WHERE user_id = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (user_id, before_seq if before_seq is not None else 2**62, limit),
            ).fetchall()
            return [self._read_order(conn, r["order_id"]) for r in rows]

    def _read_order(self, conn: sqlite3.Connection, order_id: str) -> Order:
        row = conn.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
        if row is None:
            raise _order_not_found(order_id)
        items = conn.execute(
            "SELECT sku, quantity, price_minor, currency FROM order_items"
            " WHERE order_id = ? ORDER BY position",
            (order_id,),
        ).fetchall()
        return Order(
            order_id=row["order_id"],
            user_id=row["user_id"],
            request_id=row["request_id"],
            items=tuple(
                LineItem(i["sku"], i["quantity"], i["price_minor"], i["currency"]) for i in items
            ),
            state=OrderState(row["state"]),
            cancel_reason=row["cancel_reason"],
            total_minor=row["total_minor"],
            currency=row["currency"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            seq=row["seq"],
        )

    def prunable(self, before: float) -> bool:
        """Whether some CANCELLED order ended before `before` (see `prune`)."""
        return bool(
            self._reads.execute(
                "SELECT 1 FROM sagas WHERE phase = ? AND updated_at < ? LIMIT 1",
                (Phase.CANCELLED.value, before),
            ).fetchone()
        )

    @db.batched
    def prune(self, before: float, limit: int = 1000) -> int:
        """Deletes up to `limit` CANCELLED orders (all their rows) that ended before
        `before`; returns how many. Confirmed orders are the shop's record and stay.
        Their request ids are forgotten with them: a repeat after that places a new order."""
        with db.transaction(self._conn) as conn:
            ids = [
                (r["order_id"],)
                for r in conn.execute(
                    "SELECT order_id FROM sagas WHERE phase = ? AND updated_at < ?"
                    " ORDER BY updated_at LIMIT ?",
                    (Phase.CANCELLED.value, before, limit),
                )
            ]
            for table in ("order_items", "saga_leases", "parked_sagas", "sagas", "orders"):
                conn.executemany(f"DELETE FROM {table} WHERE order_id = ?", ids)
            return len(ids)

    # The saga record.

    def saga(self, order_id: str) -> Saga:
        return _read_saga(self._reads, order_id)

    def open_sagas(self, now: float, limit: int = -1) -> list[str]:
        """Ids of sagas nobody drives: not final, not parked, and with no lease or an
        expired one at `now`; oldest first, at most `limit` (-1: all)."""
        # `phase IN (open phases)`, not `NOT IN (finals)`: IN walks the (phase, updated_at)
        # index; NOT IN scanned every saga ever made (4 ms at 50k orders, every interval).
        open_phases = [p.value for p in Phase if p not in FINAL_PHASES]
        rows = self._reads.execute(
            "SELECT sagas.order_id FROM sagas LEFT JOIN saga_leases USING (order_id)"
            f" WHERE phase IN ({_placeholders(open_phases)})"
            " AND (saga_leases.expires_at IS NULL OR saga_leases.expires_at <= ?)"
            " AND sagas.order_id NOT IN (SELECT order_id FROM parked_sagas)"
            " ORDER BY sagas.updated_at LIMIT ?",
            (*open_phases, now, limit),
        ).fetchall()
        return [r["order_id"] for r in rows]

    # Leases: who drives a saga.

    @db.batched
    def acquire(self, order_id: str, owner: str, now: float, until: float) -> Lease | None:
        """Takes the saga's lease until `until`, with a new epoch, if nobody holds it (no
        lease, an expired one, or one `owner` held before); None if another instance does,
        or if the saga is final. NOT_FOUND if there is no such saga."""
        with db.transaction(self._conn) as conn:
            if _read_saga(conn, order_id).phase in FINAL_PHASES:
                return None  # nothing left to drive
            row = conn.execute(
                "SELECT owner, epoch, expires_at FROM saga_leases WHERE order_id = ?",
                (order_id,),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO saga_leases (order_id, owner, epoch, expires_at)"
                    " VALUES (?, ?, 1, ?)",
                    (order_id, owner, until),
                )
                return Lease(order_id, owner, 1)
            if row["owner"] != owner and row["expires_at"] > now:
                return None
            conn.execute(
                "UPDATE saga_leases SET owner = ?, epoch = epoch + 1, expires_at = ?"
                " WHERE order_id = ?",
                (owner, until, order_id),
            )
            return Lease(order_id, owner, row["epoch"] + 1)

    @db.batched
    def renew(self, lease: Lease, until: float) -> bool:
        """Extends the lease to `until`; False if it is no longer held (another epoch)."""
        with db.transaction(self._conn) as conn:
            return bool(
                conn.execute(
                    "UPDATE saga_leases SET expires_at = ?"
                    " WHERE order_id = ? AND owner = ? AND epoch = ?",
                    (until, lease.order_id, lease.owner, lease.epoch),
                ).rowcount
            )

    @db.batched
    def renew_all(self, leases: Sequence[Lease], until: float) -> set[Lease]:
        """Extends each lease still held to `until`, in one transaction; returns those."""
        with db.transaction(self._conn) as conn:
            return {
                lease
                for lease in leases
                if conn.execute(
                    "UPDATE saga_leases SET expires_at = ?"
                    " WHERE order_id = ? AND owner = ? AND epoch = ?",
                    (until, lease.order_id, lease.owner, lease.epoch),
                ).rowcount
            }

    @db.batched
    def release(self, leases: Sequence[Lease]) -> int:
        """Gives the leases up (an instance that stops), so others adopt at once."""
        with db.transaction(self._conn) as conn:
            return sum(_release(conn, lease) for lease in leases)

    def lease(self, order_id: str) -> Lease | None:
        """The saga's lease as stored (expired or not); None if it has none."""
        row = self._reads.execute(
            "SELECT owner, epoch FROM saga_leases WHERE order_id = ?", (order_id,)
        ).fetchone()
        return Lease(order_id, row["owner"], row["epoch"]) if row else None

    # Parked sagas: driven no more until an operator resumes them.

    @db.batched
    def park(self, lease: Lease, phase: Phase, reason: str, detail: str, now: float) -> bool:
        """Stops driving the saga, if it is still in `phase` and not parked already; its
        lease is given up, so any instance may drive it once an operator resumes it."""
        with db.transaction(self._conn) as conn:
            _fence(conn, lease)
            parked = conn.execute(
                "INSERT OR IGNORE INTO parked_sagas (order_id, phase, reason, detail,"
                " parked_at) SELECT order_id, phase, ?, ?, ? FROM sagas"
                " WHERE order_id = ? AND phase = ?",
                (reason, detail, now, lease.order_id, phase.value),
            ).rowcount
            if parked:
                _release(conn, lease)
            return bool(parked)

    @db.batched
    def unpark(self, order_id: str) -> bool:
        """Lets the saga be driven again; False if it was not parked."""
        with db.transaction(self._conn) as conn:
            return bool(
                conn.execute("DELETE FROM parked_sagas WHERE order_id = ?", (order_id,)).rowcount
            )

    def parked(self, after_seq: int = 0, limit: int = -1) -> list[ParkedSaga]:
        """Parked sagas, oldest first, after `after_seq` (a ParkedSaga's seq); at most
        `limit` of them (-1: all)."""
        rows = self._reads.execute(
            "SELECT parked_sagas.rowid AS seq, parked_sagas.*, orders.user_id"
            " FROM parked_sagas JOIN orders USING (order_id)"
            " WHERE parked_sagas.rowid > ? ORDER BY parked_sagas.rowid LIMIT ?",
            (after_seq, limit),
        ).fetchall()
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

    @db.batched
    def record_reserved(
        self, lease: Lease, items: Sequence[LineItem], currency: str, now: float
    ) -> bool:
        """STARTED -> RESERVED, with the prices the hold fixed and the order's total."""
        order_id = lease.order_id
        total = sum((i.price_minor or 0) * i.quantity for i in items)
        with db.transaction(self._conn) as conn:
            _fence(conn, lease)
            if not _move(conn, order_id, (Phase.STARTED,), Phase.RESERVED, now):
                return False
            conn.executemany(
                "UPDATE order_items SET price_minor = ?, currency = ?"
                " WHERE order_id = ? AND sku = ?",
                [(i.price_minor, i.currency, order_id, i.sku) for i in items],
            )
            conn.execute(
                "UPDATE orders SET total_minor = ?, currency = ?, updated_at = ?"
                " WHERE order_id = ?",
                (total, currency, now, order_id),
            )
            return True

    @db.batched
    def advance(self, lease: Lease, before: Phase, after: Phase, now: float) -> bool:
        """Moves the saga from `before` to `after`; to the pivot only if no cancel was asked for."""
        order_id = lease.order_id
        with db.transaction(self._conn) as conn:
            _fence(conn, lease)
            if after is Phase.COMMITTING:
                return bool(
                    conn.execute(
                        "UPDATE sagas SET phase = ?, updated_at = ?"
                        " WHERE order_id = ? AND phase = ? AND cancel_requested = 0",
                        (after.value, now, order_id, before.value),
                    ).rowcount
                )
            return _move(conn, order_id, (before,), after, now)

    @db.batched
    def begin_compensation(
        self, lease: Lease, before: Phase, failure: ServiceError, now: float
    ) -> bool:
        """Decides to cancel: the saga compensates from `before`, for `failure`'s reason."""
        order_id = lease.order_id
        with db.transaction(self._conn) as conn:
            _fence(conn, lease)
            return bool(
                conn.execute(
                    "UPDATE sagas SET phase = ?, compensate_from = ?, failure = ?, updated_at = ?"
                    " WHERE order_id = ? AND phase = ?",
                    (
                        Phase.COMPENSATING.value,
                        before.value,
                        encode_failure(failure),
                        now,
                        order_id,
                        before.value,
                    ),
                ).rowcount
            )

    @db.batched
    def finish(self, lease: Lease, before: Phase, now: float) -> bool:
        """The last step: CONFIRMED from COMMITTING, CANCELLED from COMPENSATING; a final
        saga needs no lease, so it goes."""
        order_id = lease.order_id
        final = Phase.CONFIRMED if before is Phase.COMMITTING else Phase.CANCELLED
        with db.transaction(self._conn) as conn:
            _fence(conn, lease)
            if not _move(conn, order_id, (before,), final, now):
                return False
            # Final: no write follows, so the lease row can go.
            conn.execute("DELETE FROM saga_leases WHERE order_id = ?", (order_id,))
            reason = ""
            if final is Phase.CANCELLED:
                failure = _read_saga(conn, order_id).failure
                reason = failure.reason if failure is not None else ""
            conn.execute(
                "UPDATE orders SET state = ?, cancel_reason = ?, updated_at = ? WHERE order_id = ?",
                (final.value, reason, now, order_id),
            )
            return True

    @db.batched
    def request_cancel(self, order_id: str, now: float) -> bool:
        """Asks a saga that has not passed its pivot to cancel; False if it has."""
        phases = [p.value for p in CANCELLABLE_PHASES]
        with db.transaction(self._conn) as conn:
            return bool(
                conn.execute(
                    "UPDATE sagas SET cancel_requested = 1, updated_at = ?"
                    f" WHERE order_id = ? AND phase IN ({_placeholders(phases)})",
                    (now, order_id, *phases),
                ).rowcount
            )


def _read_saga(conn: sqlite3.Connection, order_id: str) -> Saga:
    # The parked flag in the same read: the saga's driver looks at both before each step.
    row = conn.execute(
        "SELECT sagas.*, parked_sagas.order_id IS NOT NULL AS parked FROM sagas"
        " LEFT JOIN parked_sagas USING (order_id) WHERE order_id = ?",
        (order_id,),
    ).fetchone()
    if row is None:
        raise _order_not_found(order_id)
    return Saga(
        order_id=row["order_id"],
        phase=Phase(row["phase"]),
        compensate_from=Phase(row["compensate_from"]) if row["compensate_from"] else None,
        cancel_requested=bool(row["cancel_requested"]),
        failure=decode_failure(row["failure"]),
        parked=bool(row["parked"]),
    )


def _check_quota(conn: sqlite3.Connection, user_id: str, quota: Quota) -> None:
    [open_orders] = conn.execute(
        "SELECT COUNT(*) FROM orders WHERE user_id = ? AND state = 'PENDING'", (user_id,)
    ).fetchone()
    if open_orders >= quota.max_open_orders:
        raise ServiceError(
            ErrorKind.RESOURCE_EXHAUSTED,
            "TOO_MANY_OPEN_ORDERS",
            f"you have {open_orders} orders in progress, the most one user may have at once;"
            " place this one when one of them is done",
            metadata={"limit": str(quota.max_open_orders)},
        )
    declined = conn.execute(
        "SELECT COUNT(*), MIN(updated_at) FROM orders WHERE user_id = ? AND updated_at > ?"
        f" AND {_DECLINED}",
        (user_id, quota.declines_since),
    ).fetchone()
    if declined[0] >= quota.max_declines:
        # Refused until the oldest decline counted leaves the window.
        retry_after = max(1, math.ceil(declined[1] - quota.declines_since))
        raise ServiceError(
            ErrorKind.RESOURCE_EXHAUSTED,
            "TOO_MANY_DECLINED_ORDERS",
            f"{declined[0]} of your recent orders could not be paid for; new orders are"
            f" refused for {retry_after} s (check your balance first)",
            metadata={"limit": str(quota.max_declines), "retry_after_seconds": str(retry_after)},
        )


def _fence(conn: sqlite3.Connection, lease: Lease) -> None:
    """Raises LeaseLost unless `lease` is the saga's lease now (owner and epoch)."""
    held = conn.execute(
        "SELECT 1 FROM saga_leases WHERE order_id = ? AND owner = ? AND epoch = ?",
        (lease.order_id, lease.owner, lease.epoch),
    ).fetchone()
    if held is None:
        raise LeaseLost(lease)


def _release(conn: sqlite3.Connection, lease: Lease) -> int:
    # Expired at once rather than deleted: the next holder still takes a higher epoch.
    return conn.execute(
        "UPDATE saga_leases SET expires_at = 0 WHERE order_id = ? AND owner = ? AND epoch = ?",
        (lease.order_id, lease.owner, lease.epoch),
    ).rowcount


def _move(
    conn: sqlite3.Connection, order_id: str, before: Sequence[Phase], after: Phase, now: float
) -> bool:
    values = [p.value for p in before]
    return bool(
        conn.execute(
            "UPDATE sagas SET phase = ?, updated_at = ?"
            f" WHERE order_id = ? AND phase IN ({_placeholders(values)})",
            (after.value, now, order_id, *values),
        ).rowcount
    )
