"""Payment's SQLite store: money moves between available, held and captured atomically.

For every account, `available + held + captured` equals what was deposited, and one
payment per order (the primary key) means at most one capture per order.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3

from services.common import db
from services.common.errors import ServiceError, already_exists, failed_precondition, not_found
from services.payment.domain import Account, Payment, PaymentState

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    user_id TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    available INTEGER NOT NULL CHECK (available >= 0),
    held INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    captured INTEGER NOT NULL DEFAULT 0 CHECK (captured >= 0)
);
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""


def account_not_found(user_id: str) -> ServiceError:
    return not_found("ACCOUNT_NOT_FOUND", f"user {user_id!r} has no account", user_id=user_id)


class PaymentStore(db.Store):
    schema = SCHEMA

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
        found = _payment(self._reads, order_id)
        if found is None or (user_id is not None and found.user_id != user_id):
            raise not_found(
                "PAYMENT_NOT_FOUND", f"order {order_id!r} has no payment", order_id=order_id
            )
        return found

    @db.batched
    def authorize(
        self, order_id: str, user_id: str, amount_minor: int, currency: str, now: float
    ) -> Payment:
        """Holds the amount, or records a decline; a repeat gives the first answer."""
        with db.transaction(self._conn) as conn:
            existing = _payment(conn, order_id)
            if existing is None:
                account = conn.execute(
                    "SELECT currency FROM accounts WHERE user_id = ?", (user_id,)
                ).fetchone()
                if account is None:
                    raise failed_precondition(
                        "ACCOUNT_NOT_FOUND", f"user {user_id!r} has no account", user_id=user_id
                    )
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
                existing = _payment(conn, order_id)
                assert existing is not None
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
        if existing.state is PaymentState.DECLINED:
            # Raised after the transaction so that the decline stays recorded.
            raise failed_precondition(
                "INSUFFICIENT_FUNDS", "the account cannot cover the amount", order_id=order_id
            )
        if existing.state is PaymentState.VOIDED:
            raise failed_precondition(
                "PAYMENT_VOIDED", f"the payment of order {order_id!r} was voided", order_id=order_id
            )
        return existing

    @db.batched
    def capture(self, order_id: str, user_id: str, now: float) -> Payment:
        """Takes the held amount; a repeat returns the captured payment."""
        with db.transaction(self._conn) as conn:
            found = _owned(conn, order_id, user_id)
            if found.state is PaymentState.AUTHORIZED:
                _move(conn, found, "held = held - ?1, captured = captured + ?1")
                _set_state(conn, order_id, PaymentState.CAPTURED, now)
            elif found.state is not PaymentState.CAPTURED:
                raise failed_precondition(
                    f"PAYMENT_{found.state.value}",
                    f"the payment of order {order_id!r} is {found.state.value.lower()}",
                    order_id=order_id,
                )
            return _payment_or_fail(conn, order_id)

    @db.batched
    def void(self, order_id: str, user_id: str, now: float) -> Payment:
        """Gives the held amount back; for an unknown order, records an empty voided one."""
        with db.transaction(self._conn) as conn:
            if _payment(conn, order_id) is None:
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
            elif found.state is PaymentState.CAPTURED:
                raise failed_precondition(
                    "PAYMENT_ALREADY_CAPTURED",
                    f"the payment of order {order_id!r} was captured",
                    order_id=order_id,
                )
            return _payment_or_fail(conn, order_id)


def _payment(conn: sqlite3.Connection, order_id: str) -> Payment | None:
    row = conn.execute("SELECT * FROM payments WHERE order_id = ?", (order_id,)).fetchone()
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
    )


def _payment_or_fail(conn: sqlite3.Connection, order_id: str) -> Payment:
    found = _payment(conn, order_id)
    assert found is not None
    return found


def _owned(conn: sqlite3.Connection, order_id: str, user_id: str) -> Payment:
    found = _payment(conn, order_id)
    if found is None or found.user_id != user_id:
        raise not_found(
            "PAYMENT_NOT_FOUND", f"order {order_id!r} has no payment", order_id=order_id
        )
    return found


def _move(conn: sqlite3.Connection, payment: Payment, assignment: str) -> None:
    conn.execute(
        f"UPDATE accounts SET {assignment} WHERE user_id = ?2",
        (payment.amount_minor, payment.user_id),
    )


def _set_state(conn: sqlite3.Connection, order_id: str, state: PaymentState, now: float) -> None:
    conn.execute(
        "UPDATE payments SET state = ?, updated_at = ? WHERE order_id = ?",
        (state.value, now, order_id),
    )
