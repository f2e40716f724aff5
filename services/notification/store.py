"""Notification's store: users' contact addresses, and one notification record per order
outcome, written before its message is sent.

The record is the intent of the exactly-once-recorded, at-least-once-sent delivery
(docs/notifications.md): `record` inserts it keyed by the event id and by the order id,
both UNIQUE, so a redelivered event (or a second consumer instance handed the same
message) finds the row there and makes no second one. Its state moves PENDING -> SENT,
UNDELIVERABLE or FAILED, and never back: every change is an UPDATE conditional on PENDING.
"""

from __future__ import annotations

import asyncio
import json
import pathlib

from services.common import db
from services.common.database import Row, Tx, clock
from services.common.errors import ServiceError, not_found
from services.notification.domain import (
    Contact,
    Notification,
    NotificationState,
    Outcome,
    message_id,
)

ERROR_TEXT_LIMIT = 500
"""The most of a send error's text kept on the record (an SMTP reply can be long)."""


def contact_not_found(user_id: str) -> ServiceError:
    return not_found(
        "CONTACT_ADDRESS_NOT_FOUND", f"user {user_id!r} has no contact address", user_id=user_id
    )


class NotificationStore(db.Store):
    service = "notification"

    async def seed(self, seed_file: pathlib.Path) -> int:
        """Sets the seed file's contact addresses of users who have none; returns how many."""
        contacts = json.loads(await asyncio.to_thread(seed_file.read_text)).get("contacts", [])

        async def seed(tx: Tx) -> int:
            at = await tx.now()
            added = 0
            for c in contacts:
                added += await tx.execute(
                    "INSERT INTO contacts (user_id, email_address, updated_at)"
                    " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (c["user_id"], c["email_address"], at),
                )
            return added

        return await self.db.write(seed)

    async def set_contact(
        self, user_id: str, email_address: str, now: float | None = None
    ) -> Contact:
        """Sets the user's address; the same address again keeps its update time."""

        async def write(tx: Tx) -> Contact:
            at = await clock(tx, now)
            await tx.execute(
                "INSERT INTO contacts (user_id, email_address, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET email_address = excluded.email_address,"
                " updated_at = excluded.updated_at"
                " WHERE contacts.email_address <> excluded.email_address",
                (user_id, email_address, at),
            )
            found = await _contact(tx, user_id)
            assert found is not None  # just written
            return found

        return await self.db.write(write)

    async def contact(self, user_id: str) -> Contact:
        """The user's address; NOT_FOUND if none."""
        found = await self.db.read(lambda tx: _contact(tx, user_id))
        if found is None:
            raise contact_not_found(user_id)
        return found

    async def record(self, outcome: Outcome, now: float | None = None) -> tuple[Notification, bool]:
        """The notification of `outcome` and whether this call recorded it: PENDING with
        the user's address as it is now, or UNDELIVERABLE if they have none. A record
        already there (the same event, or the same order's) is returned as it is."""

        async def write(tx: Tx) -> tuple[Notification, bool]:
            at = await clock(tx, now)
            contact = await _contact(tx, outcome.user_id)
            state = NotificationState.PENDING if contact else NotificationState.UNDELIVERABLE
            created = await tx.execute(
                "INSERT INTO notifications (event_id, order_id, user_id, order_state,"
                " total_minor, currency, cancel_reason, email_address, state, message_id,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (
                    outcome.event_id,
                    outcome.order_id,
                    outcome.user_id,
                    outcome.order_state,
                    outcome.total_minor,
                    outcome.currency,
                    outcome.cancel_reason,
                    contact.email_address if contact else "",
                    state.value,
                    message_id(outcome.event_id),
                    at,
                    at,
                ),
            )
            row = await tx.fetchone(
                "SELECT * FROM notifications WHERE event_id = ? OR order_id = ?"
                " ORDER BY seq LIMIT 1",
                (outcome.event_id, outcome.order_id),
            )
            assert row is not None  # inserted, or there already
            return _notification(row), bool(created)

        return await self.db.write(write)

    async def begin_attempt(self, event_id: str, now: float | None = None) -> int:
        """Counts one more attempt to send a PENDING notification, before it is made (so a
        crash mid-send still counts); returns the attempts so far, 0 if it is not PENDING."""

        async def write(tx: Tx) -> int:
            at = await clock(tx, now)
            changed = await tx.execute(
                "UPDATE notifications SET attempts = attempts + 1, updated_at = ?"
                " WHERE event_id = ? AND state = ?",
                (at, event_id, NotificationState.PENDING.value),
            )
            if not changed:
                return 0
            row = await tx.fetchone(
                "SELECT attempts FROM notifications WHERE event_id = ?", (event_id,)
            )
            return int(row["attempts"]) if row is not None else 0

        return await self.db.write(write)

    async def finish(
        self,
        event_id: str,
        state: NotificationState,
        error: str = "",
        now: float | None = None,
    ) -> bool:
        """Moves a PENDING notification to `state` (SENT or FAILED); False if it was not
        PENDING (another consumer instance finished it first)."""

        async def write(tx: Tx) -> bool:
            at = await clock(tx, now)
            return bool(
                await tx.execute(
                    "UPDATE notifications SET state = ?, last_error = ?, updated_at = ?"
                    " WHERE event_id = ? AND state = ?",
                    (
                        state.value,
                        error[:ERROR_TEXT_LIMIT],
                        at,
                        event_id,
                        NotificationState.PENDING.value,
                    ),
                )
            )

        return await self.db.write(write)

    async def note_error(self, event_id: str, error: str) -> None:
        """Keeps the last send error of a notification that stays PENDING (to be retried)."""

        async def write(tx: Tx) -> None:
            await tx.execute(
                "UPDATE notifications SET last_error = ? WHERE event_id = ? AND state = ?",
                (error[:ERROR_TEXT_LIMIT], event_id, NotificationState.PENDING.value),
            )

        await self.db.write(write)

    async def notification(self, event_id: str) -> Notification | None:
        row = await self.db.read(
            lambda tx: tx.fetchone("SELECT * FROM notifications WHERE event_id = ?", (event_id,))
        )
        return _notification(row) if row is not None else None

    async def notifications(
        self, user_id: str, before_seq: int | None, limit: int
    ) -> list[Notification]:
        """The user's notifications, newest first, older than `before_seq` if given."""
        rows = await self.db.read(
            lambda tx: tx.fetchall(
                "SELECT * FROM notifications WHERE user_id = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (user_id, before_seq if before_seq is not None else 2**62, limit),
            )
        )
        return [_notification(r) for r in rows]

    async def all_notifications(self) -> list[Notification]:
        """Every record, oldest first (for checks of the whole: tests, the fault suite)."""
        rows = await self.db.read(
            lambda tx: tx.fetchall("SELECT * FROM notifications ORDER BY seq", ())
        )
        return [_notification(r) for r in rows]


async def _contact(tx: Tx, user_id: str) -> Contact | None:
    row = await tx.fetchone("SELECT * FROM contacts WHERE user_id = ?", (user_id,))
    if row is None:
        return None
    return Contact(row["user_id"], row["email_address"], row["updated_at"])


def _notification(row: Row) -> Notification:
    return Notification(
        seq=row["seq"],
        outcome=Outcome(
            event_id=row["event_id"],
            order_id=row["order_id"],
            user_id=row["user_id"],
            order_state=row["order_state"],
            total_minor=row["total_minor"],
            currency=row["currency"],
            cancel_reason=row["cancel_reason"],
        ),
        email_address=row["email_address"],
        state=NotificationState(row["state"]),
        message_id=row["message_id"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
