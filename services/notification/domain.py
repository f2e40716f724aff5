"""Notification's domain: what a notification is, where its delivery is, and the message
that tells a customer how their order ended. No gRPC, no SQL, no SMTP."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

MESSAGE_ID_DOMAIN = "notification.shopmesh"


class NotificationState(enum.Enum):
    PENDING = "PENDING"
    """Recorded (the intent), not yet accepted by the mail server."""
    SENT = "SENT"
    UNDELIVERABLE = "UNDELIVERABLE"
    """The user had no contact address when the notification was recorded."""
    FAILED = "FAILED"
    """The mail server refused or was away on every attempt allowed."""


FINAL_STATES = (NotificationState.SENT, NotificationState.UNDELIVERABLE, NotificationState.FAILED)


@dataclass(frozen=True)
class Outcome:
    """An order's end as its event tells it: what a notification is about."""

    event_id: str
    order_id: str
    user_id: str
    order_state: str
    """CONFIRMED or CANCELLED."""
    total_minor: int | None
    """None: the order was cancelled before its prices were known."""
    currency: str
    cancel_reason: str = ""


@dataclass(frozen=True)
class Notification:
    seq: int
    outcome: Outcome
    email_address: str
    state: NotificationState
    message_id: str
    attempts: int
    last_error: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Contact:
    user_id: str
    email_address: str
    updated_at: float


def message_id(event_id: str) -> str:
    """The Message-ID of the event's message: the same for every copy sent, so a receiver
    (or a test) can tell a second copy from a second notification (RFC 5322 3.6.4)."""
    return f"<{event_id}@{MESSAGE_ID_DOMAIN}>"


def amount_text(total_minor: int | None, currency: str) -> str:
    if total_minor is None:
        return "not known (the order was cancelled before it was priced)"
    return f"{total_minor // 100}.{total_minor % 100:02d} {currency}".strip()


def email(notification: Notification, sender: str, sent_at: float) -> EmailMessage:
    """The message that tells the customer how the order ended."""
    o = notification.outcome
    message = EmailMessage()
    message["From"] = sender
    message["To"] = notification.email_address
    message["Message-ID"] = notification.message_id
    message["Date"] = format_datetime(datetime.fromtimestamp(sent_at, UTC))
    message["Subject"] = f"Your order {o.order_id} is {o.order_state.lower()}"
    lines = [
        f"Order: {o.order_id}",
        f"State: {o.order_state}",
        f"Total: {amount_text(o.total_minor, o.currency)}",
    ]
    if o.cancel_reason:
        lines.append(f"Reason: {o.cancel_reason}")
    message.set_content("\n".join(lines) + "\n")
    return message
