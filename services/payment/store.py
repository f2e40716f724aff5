"""Payment's SQLite store: money moves between available, held and captured atomically.

For every account, `available + held + captured` equals what was deposited, and one
payment per order (the primary key) means at most one capture per order.

An authorization holds money only until its expire time: then it gives the money back and
the payment is EXPIRED. Each write expires what is due first (as inventory's holds do), so
no call ever sees an authorization past its time, and the service's sweeper does the same
for authorizations nobody calls about (`expire_due`).
"""

from __future__ import annotations

import json
import pathlib
import sqlite3

from services.common import db
from services.common.errors import ServiceError, already_exists, failed_precondition, not_found
from services.payment.domain import (
    PRUNABLE_STATES,
    Account,
    Payment,
    PaymentState,
)

# Rows one prune deletes at most: a backlog (the first prune of an old database) is worked
# off over several sweeps, each a short transaction, instead of one that stalls writes.
PRUNE_BATCH = 1000


def account_not_found(user_id: str) -> ServiceError:
    return not_found("ACCOUNT_NOT_FOUND", f"user {user_id!r} has no account", user_id=user_id)


class PaymentStore(db.Store):
    service = "payment"

    def seed(self, seed_file: pathlib.Path) -> int:
        """Opens the seed file's accounts that do not exist yet; returns how many."""
        accounts = json.loads(seed_file.read_text()).get("accounts", [])
        added = 0
        with db.transaction(self._conn) as conn:
            for a in accounts:
                added += conn.execute(
                    "INSERT OR IGNORE INTO accounts (user_id, currency, available)"
                    " VALUES (?, ?, ?)",
                    (a["user_id"], a.get("currency", "USD"), a["balance_minor"]),
                ).rowcount
        return added

    def account(self, user_id: str) -> Account:
        row = self._reads.execute("SELECT * FROM accounts WHERE user_id = ?", (user_id,)).fetchone()
        if row is None:
            raise account_not_found(user_id)
        return Account(row["user_id"], row["currency"], row["available"], row["held"])

    def payment(self, order_id: str, user_id: str | None = None) -> Payment:
        """The order's payment; NOT_FOUND if none, or if it is another user's."""
        found = _read_payment(self._reads, order_id)
        if found is None or (user_id is not None and found.user_id != user_id):
            raise _payment_not_found(order_id)
        return found

    @db.batched
    def authorize(
        self,
        order_id: str,
        user_id: str,
        amount_minor: int,
        currency: str,
        *,
        now: float,
        authorization_seconds: float,
    ) -> Payment:
        """Holds the amount for `authorization_seconds`, or records a decline; a repeat
        gives the first answer (and keeps the first expire time)."""
        with db.transaction(self._conn) as conn:
            _expire_due(conn, now)
            existing = _read_payment(conn, order_id)
            if existing is None:
                account = conn.execute(
                    "SELECT currency FROM accounts WHERE user_id = ?", (user_id,)
                ).fetchone()
                if account is None:
                    raise account_not_found(user_id)
                if account["currency"] != currency:
                    raise failed_precondition(
                        "CURRENCY_MISMATCH",
                        f"the account is in {account['currency']}, not {currency}",
                        currency=account["currency"],
                    )
                held = conn.execute(
                    "UPDATE accounts SET available = available - ?1, held = held + ?1"
                    " WHERE user_id = ?2 AND available >= ?1",
                    (amount_minor, user_id),
                ).rowcount
                state = PaymentState.AUTHORIZED if held else PaymentState.DECLINED
                conn.execute(
                    "INSERT INTO payments VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (order_id, user_id, amount_minor, currency, state.value, now, now),
                )
                if held:
                    conn.execute(
                        "INSERT INTO authorization_expiry (order_id, expire_at) VALUES (?, ?)",
                        (order_id, now + authorization_seconds),
                    )
                existing = _payment_or_fail(conn, order_id)
            elif existing.state is PaymentState.VOIDED and existing.amount_minor == 0:
                pass  # a tombstone from VoidPayment: checked below, holds nothing
            elif (existing.user_id, existing.amount_minor, existing.currency) != (
                user_id,
                amount_minor,
                currency,
            ):
                raise already_exists(
                    "PAYMENT_MISMATCH",
                    f"order {order_id!r} already has a different payment",
                    order_id=order_id,
                )
        # Raised after the transaction, so that the decline (or the expiry) stays recorded.
        if existing.state is PaymentState.DECLINED:
            raise failed_precondition(
                "INSUFFICIENT_FUNDS", "the account cannot cover the amount", order_id=order_id
            )
        if existing.state in (PaymentState.VOIDED, PaymentState.EXPIRED):
            raise _nothing_held(existing)
        return existing

    @db.batched
    def capture(self, order_id: str, user_id: str, now: float) -> Payment:
        """Takes the held amount; a repeat returns the captured payment."""
        with db.transaction(self._conn) as conn:
            _expire_due(conn, now)
            found = _owned(conn, order_id, user_id)
            if found.state is PaymentState.AUTHORIZED:
                _move(conn, found, "held = held - ?1, captured = captured + ?1")
                _set_state(conn, order_id, PaymentState.CAPTURED, now)
            found = _payment_or_fail(conn, order_id)
        if found.state is not PaymentState.CAPTURED:
            raise _nothing_held(found)  # after the transaction: an expiry stays recorded
        return found

    @db.batched
    def void(self, order_id: str, user_id: str, now: float) -> Payment:
        """Gives the held amount back; for an unknown order, records an empty voided one.
        An expired, declined or voided payment holds nothing, and stays as it is."""
        with db.transaction(self._conn) as conn:
            _expire_due(conn, now)
            if _read_payment(conn, order_id) is None:
                # A tombstone: an AuthorizePayment for this order that arrives late finds
                # it and holds nothing.
                conn.execute(
                    "INSERT INTO payments VALUES (?, ?, 0, '', ?, ?, ?)",
                    (order_id, user_id, PaymentState.VOIDED.value, now, now),
                )
                return _payment_or_fail(conn, order_id)
            found = _owned(conn, order_id, user_id)
            if found.state is PaymentState.AUTHORIZED:
                _move(conn, found, "held = held - ?1, available = available + ?1")
                _set_state(conn, order_id, PaymentState.VOIDED, now)
            found = _payment_or_fail(conn, order_id)
        if found.state is PaymentState.CAPTURED:
            raise failed_precondition(
                "PAYMENT_ALREADY_CAPTURED",
                f"the payment of order {order_id!r} was captured",
                order_id=order_id,
            )
        return found

    @db.batched
    def expire_due(self, now: float) -> int:
        """Gives back the money of every authorization past its expire time; how many."""
        with db.transaction(self._conn) as conn:
            return _expire_due(conn, now)

    @db.batched
    def prune(self, now: float, retention_seconds: float) -> int:
        """Deletes payments that hold no money and have not changed for longer than
        `retention_seconds` (VOIDED, DECLINED, EXPIRED, and VoidPayment's tombstones);
        never a CAPTURED one, the record of money taken. At most PRUNE_BATCH at a time;
        returns how many.

        Pruning a tombstone or a declined payment is safe now that authorizations expire:
        the saga that made it is finished (cancelled) long since, and an AuthorizePayment
        for that order arriving later still, which the row would have refused, holds the
        money only until its authorization expires (the saga no longer waits for it, so
        nobody captures it), then gives it back. No money appears or vanishes: a pruned
        payment held nothing, and the accounts' totals do not count it.
        """
        with db.transaction(self._conn) as conn:
            return conn.execute(
                "DELETE FROM payments WHERE order_id IN (SELECT order_id FROM payments"
                " WHERE state IN (?, ?, ?) AND updated_at < ? LIMIT ?)",
                (*(s.value for s in PRUNABLE_STATES), now - retention_seconds, PRUNE_BATCH),
            ).rowcount


def _read_payment(conn: sqlite3.Connection, order_id: str) -> Payment | None:
    row = conn.execute(
        "SELECT p.*, e.expire_at FROM payments p LEFT JOIN authorization_expiry e"
        " USING (order_id) WHERE p.order_id = ?",
        (order_id,),
    ).fetchone()
    if row is None:
        return None
    return Payment(
        row["order_id"],
        row["user_id"],
        row["amount_minor"],
        row["currency"],
        PaymentState(row["state"]),
        row["created_at"],
        row["updated_at"],
        row["expire_at"],
    )


def _nothing_held(payment: Payment) -> ServiceError:
    """The refusal to capture (or authorize again) a payment that holds no money."""
    state = payment.state.value
    return failed_precondition(
        f"PAYMENT_{state}",
        f"the payment of order {payment.order_id!r} is {state.lower()}",
        order_id=payment.order_id,
    )


def _payment_or_fail(conn: sqlite3.Connection, order_id: str) -> Payment:
    found = _read_payment(conn, order_id)
    assert found is not None
    return found


def _payment_not_found(order_id: str) -> ServiceError:
    """For an order with no payment, or another user's: the same answer, so no probing."""
    return not_found("PAYMENT_NOT_FOUND", f"order {order_id!r} has no payment", order_id=order_id)


def _owned(conn: sqlite3.Connection, order_id: str, user_id: str) -> Payment:
    found = _read_payment(conn, order_id)
    if found is None or found.user_id != user_id:
        raise _payment_not_found(order_id)
    return found


def _move(conn: sqlite3.Connection, payment: Payment, assignment: str) -> None:
    conn.execute(
        f"UPDATE accounts SET {assignment} WHERE user_id = ?2",
        (payment.amount_minor, payment.user_id),
    )


def _set_state(conn: sqlite3.Connection, order_id: str, state: PaymentState, now: float) -> None:
    """Moves an AUTHORIZED payment on (every move leaves AUTHORIZED): its expiry goes."""
    conn.execute(
        "UPDATE payments SET state = ?, updated_at = ? WHERE order_id = ?",
        (state.value, now, order_id),
    )
    conn.execute("DELETE FROM authorization_expiry WHERE order_id = ?", (order_id,))


def _expire_due(conn: sqlite3.Connection, now: float) -> int:
    due = conn.execute(
        "SELECT order_id FROM authorization_expiry WHERE expire_at <= ?", (now,)
    ).fetchall()
    for row in due:
        found = _payment_or_fail(conn, row["order_id"])
        _move(conn, found, "held = held - ?1, available = available + ?1")
        _set_state(conn, found.order_id, PaymentState.EXPIRED, now)
    return len(due)
