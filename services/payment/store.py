"""Payment's store: money moves between available, held and captured atomically.

For every account, `available + held + captured` equals what was deposited, and one
payment per order (the primary key) means at most one capture per order.

An authorization holds money only until its expire time: then it gives the money back and
the payment is EXPIRED. Each write expires what is due first (as inventory's holds do), so
no call ever sees an authorization past its time, and the service's sweeper does the same
for authorizations nobody calls about (`expire_due`). Expiry is the database's time
(`Tx.now`); the `now` arguments let tests set it.

Written to be right on PostgreSQL under READ COMMITTED with many instances too
(docs/postgres-concurrency.md): an order's payment row is claimed before money moves, a
payment's state changes by an UPDATE conditional on AUTHORIZED, and rows are locked in
one order: payments, then accounts, then expiry rows.
"""

from __future__ import annotations

import asyncio
import json
import pathlib

from services.common import db, events
from services.common.database import Tx, clock
from services.common.errors import ServiceError, already_exists, failed_precondition, not_found
from services.payment import events as facts
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

    async def seed(self, seed_file: pathlib.Path) -> int:
        """Opens the seed file's accounts that do not exist yet; returns how many."""
        accounts = json.loads(await asyncio.to_thread(seed_file.read_text)).get("accounts", [])

        async def seed(tx: Tx) -> int:
            added = 0
            for a in accounts:
                added += await tx.execute(
                    "INSERT INTO accounts (user_id, currency, available)"
                    " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (a["user_id"], a.get("currency", "USD"), a["balance_minor"]),
                )
            return added

        return await self.db.write(seed)

    async def account(self, user_id: str) -> Account:
        row = await self.db.read(
            lambda tx: tx.fetchone("SELECT * FROM accounts WHERE user_id = ?", (user_id,))
        )
        if row is None:
            raise account_not_found(user_id)
        return Account(row["user_id"], row["currency"], row["available"], row["held"])

    async def payment(self, order_id: str, user_id: str | None = None) -> Payment:
        """The order's payment; NOT_FOUND if none, or if it is another user's."""
        found = await self.db.read(lambda tx: _read_payment(tx, order_id))
        if found is None or (user_id is not None and found.user_id != user_id):
            raise _payment_not_found(order_id)
        return found

    async def authorize(
        self,
        order_id: str,
        user_id: str,
        amount_minor: int,
        currency: str,
        *,
        now: float | None = None,
        authorization_seconds: float,
    ) -> Payment:
        """Holds the amount for `authorization_seconds`, or records a decline; a repeat
        gives the first answer (and keeps the first expire time)."""

        async def authorize(tx: Tx) -> Payment:
            at = await clock(tx, now)
            _, returns = await _expire_due(tx, at)
            # The order's payment is claimed first: a repeat of this call at the same
            # moment on another instance waits here for this one, then finds it.
            claimed = await tx.execute(
                "INSERT INTO payments (order_id, user_id, amount_minor, currency, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (order_id, user_id, amount_minor, currency, PaymentState.AUTHORIZED.value, at, at),
            )
            if claimed:
                account = await tx.fetchone(
                    "SELECT currency FROM accounts WHERE user_id = ?", (user_id,)
                )
                if account is None:
                    raise account_not_found(user_id)
                if account["currency"] != currency:
                    raise failed_precondition(
                        "CURRENCY_MISMATCH",
                        f"the account is in {account['currency']}, not {currency}",
                        currency=account["currency"],
                    )
                held = 0
                # The accounts in one pass in user order, this one's hold among the
                # expired authorizations' money given back (see `_move_all`).
                for user in sorted({u for u, _, _ in returns} | {user_id}):
                    await _move_all(tx, [m for m in returns if m[0] == user])
                    if user == user_id:
                        held = await tx.execute(
                            "UPDATE accounts SET available = available - ?1, held = held + ?1"
                            " WHERE user_id = ?2 AND available >= ?1",
                            (amount_minor, user_id),
                        )
                if held:
                    await tx.execute(
                        "INSERT INTO authorization_expiry (order_id, expire_at) VALUES (?, ?)",
                        (order_id, at + authorization_seconds),
                    )
                else:
                    await tx.execute(
                        "UPDATE payments SET state = ? WHERE order_id = ?",
                        (PaymentState.DECLINED.value, order_id),
                    )
                payment = await _payment_or_fail(tx, order_id)
                if held:
                    await events.emit(tx, facts.authorized(payment), now=at)
                return payment
            await _move_all(tx, returns)
            existing = await _payment_or_fail(tx, order_id)
            if existing.state is PaymentState.VOIDED and existing.amount_minor == 0:
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
            return existing

        found = await self.write_events(authorize)
        # Raised after the transaction, so that the decline (or the expiry) stays recorded.
        if found.state is PaymentState.DECLINED:
            raise failed_precondition(
                "INSUFFICIENT_FUNDS", "the account cannot cover the amount", order_id=order_id
            )
        if found.state in (PaymentState.VOIDED, PaymentState.EXPIRED):
            raise _nothing_held(found)
        return found

    async def capture(self, order_id: str, user_id: str, now: float | None = None) -> Payment:
        """Takes the held amount; a repeat returns the captured payment."""

        async def capture(tx: Tx) -> Payment:
            at = await clock(tx, now)
            _, moves = await _expire_due(tx, at)
            # The state change first, conditional on AUTHORIZED: a void of the same payment
            # at the same moment moves the money, or this does, never both.
            amount = await _change_state(tx, order_id, user_id, PaymentState.CAPTURED, at)
            if amount is not None:
                moves.append((user_id, amount, CAPTURE))
            await _move_all(tx, moves)
            payment = await _owned(tx, order_id, user_id)
            if amount is not None:
                await events.emit(tx, facts.captured(payment), now=at)
            return payment

        found = await self.write_events(capture)
        if found.state is not PaymentState.CAPTURED:
            raise _nothing_held(found)  # after the transaction: an expiry stays recorded
        return found

    async def void(self, order_id: str, user_id: str, now: float | None = None) -> Payment:
        """Gives the held amount back; for an unknown order, records an empty voided one.
        An expired, declined or voided payment holds nothing, and stays as it is."""

        async def void(tx: Tx) -> Payment:
            at = await clock(tx, now)
            _, moves = await _expire_due(tx, at)
            # A tombstone if the order has no payment: an AuthorizePayment for this order
            # that arrives late (or at this very moment, on another instance) finds it and
            # holds nothing.
            tombstone = await tx.execute(
                "INSERT INTO payments (order_id, user_id, amount_minor, currency, state,"
                " created_at, updated_at) VALUES (?, ?, 0, '', ?, ?, ?) ON CONFLICT DO NOTHING",
                (order_id, user_id, PaymentState.VOIDED.value, at, at),
            )
            amount = None
            if not tombstone:
                amount = await _change_state(tx, order_id, user_id, PaymentState.VOIDED, at)
                if amount is not None:
                    moves.append((user_id, amount, GIVE_BACK))
            await _move_all(tx, moves)
            payment = await _owned(tx, order_id, user_id)
            if amount is not None:
                await events.emit(
                    tx,
                    facts.voided(
                        order_id, user_id, payment.amount_minor, payment.currency, expired=False
                    ),
                    now=at,
                )
            return payment

        found = await self.write_events(void)
        if found.state is PaymentState.CAPTURED:
            raise failed_precondition(
                "PAYMENT_ALREADY_CAPTURED",
                f"the payment of order {order_id!r} was captured",
                order_id=order_id,
            )
        return found

    async def expire_due(self, now: float | None = None) -> int:
        """Gives back the money of every authorization past its expire time; how many."""

        async def expire(tx: Tx) -> int:
            expired, moves = await _expire_due(tx, await clock(tx, now))
            await _move_all(tx, moves)
            return expired

        return await self.write_events(expire)

    async def prune(self, retention_seconds: float, now: float | None = None) -> int:
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

        async def prune(tx: Tx) -> int:
            return await tx.execute(
                "DELETE FROM payments WHERE order_id IN (SELECT order_id FROM payments"
                f" WHERE state IN (?, ?, ?) AND updated_at < ? LIMIT ?{tx.skip_locked})",
                (
                    *(s.value for s in PRUNABLE_STATES),
                    await clock(tx, now) - retention_seconds,
                    PRUNE_BATCH,
                ),
            )

        return await self.db.write(prune)


async def _read_payment(tx: Tx, order_id: str) -> Payment | None:
    row = await tx.fetchone(
        "SELECT p.*, e.expire_at FROM payments p LEFT JOIN authorization_expiry e"
        " USING (order_id) WHERE p.order_id = ?",
        (order_id,),
    )
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


async def _payment_or_fail(tx: Tx, order_id: str) -> Payment:
    found = await _read_payment(tx, order_id)
    assert found is not None
    return found


def _payment_not_found(order_id: str) -> ServiceError:
    """For an order with no payment, or another user's: the same answer, so no probing."""
    return not_found("PAYMENT_NOT_FOUND", f"order {order_id!r} has no payment", order_id=order_id)


async def _owned(tx: Tx, order_id: str, user_id: str) -> Payment:
    found = await _read_payment(tx, order_id)
    if found is None or found.user_id != user_id:
        raise _payment_not_found(order_id)
    return found


GIVE_BACK = "held = held - ?1, available = available + ?1"
CAPTURE = "held = held - ?1, captured = captured + ?1"

Move = tuple[str, int, str]
"""A money move: (user, amount, the assignment that moves it between an account's sums)."""


async def _change_state(
    tx: Tx, order_id: str, user_id: str, state: PaymentState, now: float
) -> int | None:
    """AUTHORIZED -> `state`, if the payment is the user's and still AUTHORIZED; its
    expiry goes. Returns the amount to move, or None if nothing changed."""
    row = await tx.fetchone(
        "UPDATE payments SET state = ?, updated_at = ?"
        " WHERE order_id = ? AND user_id = ? AND state = ? RETURNING amount_minor",
        (state.value, now, order_id, user_id, PaymentState.AUTHORIZED.value),
    )
    if row is None:
        return None
    await tx.execute("DELETE FROM authorization_expiry WHERE order_id = ?", (order_id,))
    amount: int = row["amount_minor"]
    return amount


async def _move_all(tx: Tx, moves: list[Move]) -> None:
    """Makes the moves in one pass in user order (those of a user in the order given). One
    pass: a write that gave back other users' expired authorizations and then moved its
    own user's money would lock B before A against another doing the reverse, a deadlock on
    a server database. Consecutive moves of one kind go as one executemany."""
    ordered = sorted(moves, key=lambda m: m[0])  # stable
    start = 0
    while start < len(ordered):
        end = start
        while end < len(ordered) and ordered[end][2] == ordered[start][2]:
            end += 1
        await tx.executemany(
            f"UPDATE accounts SET {ordered[start][2]} WHERE user_id = ?2",
            [(amount, user) for user, amount, _ in ordered[start:end]],
        )
        start = end


async def _expire_due(tx: Tx, now: float) -> tuple[int, list[Move]]:
    """Marks every authorization past its expire time EXPIRED; returns how many, and the
    moves that give their money back, for the caller to make with its own (`_move_all`).
    The payments are locked first, as authorize and capture lock them (those another
    transaction is busy with are left to the next sweep); an expiry row is only ever
    touched by whoever holds its payment."""
    due = await tx.fetchall(
        "SELECT p.order_id, p.user_id, p.amount_minor, p.currency FROM payments p"
        " JOIN authorization_expiry e USING (order_id)"
        " WHERE e.expire_at <= ? AND p.state = ?" + tx.skip_locked.replace("UPDATE", "UPDATE OF p"),
        (now, PaymentState.AUTHORIZED.value),
    )
    await tx.executemany(
        "UPDATE payments SET state = ?, updated_at = ? WHERE order_id = ?",
        [(PaymentState.EXPIRED.value, now, r["order_id"]) for r in due],
    )
    await tx.executemany(
        "DELETE FROM authorization_expiry WHERE order_id = ?", [(r["order_id"],) for r in due]
    )
    for r in due:
        expired = facts.voided(
            r["order_id"], r["user_id"], r["amount_minor"], r["currency"], expired=True
        )
        await events.emit(tx, expired, now=now)
    return len(due), [(r["user_id"], r["amount_minor"], GIVE_BACK) for r in due]
