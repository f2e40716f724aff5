"""The notification service's consumer of order events: each order that ends (confirmed
or cancelled) is told to its customer by e-mail, recorded exactly once and sent at least
once (docs/notifications.md).

For each delivered message, in the stream's order:

1. Decode the envelope, then the fact. A message that is not an envelope, or whose
   payload is not the fact its type names, is poison: terminated (the server never
   delivers it again), logged with its stream position and message id, counted. It never
   holds up the messages behind it.
2. A type other than OrderConfirmed or OrderCancelled (OrderPlaced, or a fact of a newer
   contract) is acked and counted as skipped; unknown fields of a known fact are ignored
   by protobuf's decoding, as a newer producer needs.
3. Record the intent (`NotificationStore.record`): one row per event id and per order id,
   so a redelivery finds the row and makes none. A user with no address is recorded
   UNDELIVERABLE and acked: nothing to retry.
4. A PENDING record: count the attempt, send with a Message-ID derived from the event id,
   mark it SENT, then ack. A crash after the send and before the mark leaves it PENDING
   and unacked: the server redelivers it after the ack wait and it is sent again, with
   the same Message-ID. A record already final (SENT, UNDELIVERABLE, FAILED) is acked.
5. The mail server away or refusing: nak with a delay that doubles from
   `retry_first_seconds` to `retry_max_seconds`; after `max_attempts` attempts (counted in
   the record, so a restart does not reset them) the record is FAILED and acked.

The message source is a small protocol (`Source`): services.common.jetstream's pull
consumer in the service, a list in the unit tests.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

from google.protobuf.message import DecodeError

from services.common.errors import ServiceError
from services.notification.domain import (
    FINAL_STATES,
    Notification,
    NotificationState,
    Outcome,
    email,
)
from services.notification.mailer import SEND_ERRORS
from services.notification.store import NotificationStore
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_events_pb2

log = logging.getLogger(__name__)

CONFIRMED = order_events_pb2.OrderConfirmed.DESCRIPTOR.full_name
CANCELLED = order_events_pb2.OrderCancelled.DESCRIPTOR.full_name
FILTER_SUBJECT = "shop.order.>"
"""The consumer's filter: order events only (the stream holds every service's)."""
STORAGE_RETRY_SECONDS = 1.0
"""The redelivery delay of a message whose record could not be written (storage down)."""


class Delivery(Protocol):
    """One delivered message; settled with exactly one of ack, nak or term."""

    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def msg_id(self) -> str: ...
    async def ack(self) -> None: ...
    async def nak(self, delay_seconds: float | None = None) -> None: ...
    async def term(self) -> None: ...


class Source(Protocol):
    """Where deliveries come from (services.common.jetstream.PullConsumer)."""

    async def fetch(self, batch: int, wait_seconds: float) -> Sequence[Delivery]: ...


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


@dataclass(frozen=True)
class ConsumerSettings:
    sender: str = "shopmesh <orders@shopmesh.example>"
    """The From of every message."""
    max_attempts: int = 10
    """Sends tried at most before a notification is FAILED: with the delays below, a mail
    server away for about 13 minutes (2+4+...+256+300 s) before it is given up."""
    retry_first_seconds: float = 2.0
    """The redelivery delay after the first failed send; it doubles."""
    retry_max_seconds: float = 300.0
    """The longest redelivery delay."""
    batch: int = 50
    """Messages fetched at once."""
    fetch_wait_seconds: float = 1.0
    """How long one fetch waits for messages."""

    def retry_delay(self, attempts: int) -> float:
        """The redelivery delay after `attempts` failed sends (1: the first)."""
        return min(self.retry_first_seconds * 2.0 ** max(attempts - 1, 0), self.retry_max_seconds)


@dataclass
class Counts:
    """What the consumer did since it started (logged, and read by tests)."""

    sent: int = 0
    undeliverable: int = 0
    failed: int = 0
    retried: int = 0
    already_done: int = 0
    """Deliveries of events whose record was final already: redeliveries, deduped."""
    parked: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    """Deliveries of event types this consumer does not act on, by type."""


class Poison(Exception):
    """A message this consumer can never handle: it is parked (terminated)."""


def outcome_of(data: bytes) -> Outcome | str:
    """The order outcome a message tells, or the event type it has if not one of ours.
    Raises Poison if it is not an envelope of a fact."""
    try:
        envelope = envelope_pb2.EventEnvelope.FromString(data)
    except DecodeError as error:
        raise Poison(f"not an event envelope ({error})") from error
    if not envelope.event_id or not envelope.type:
        raise Poison("not an event envelope (no event id or type)")
    fact: order_events_pb2.OrderConfirmed | order_events_pb2.OrderCancelled
    if envelope.type == CONFIRMED:
        fact = order_events_pb2.OrderConfirmed()
    elif envelope.type == CANCELLED:
        fact = order_events_pb2.OrderCancelled()
    else:
        return envelope.type
    try:
        fact.ParseFromString(envelope.payload)
    except DecodeError as error:
        raise Poison(f"event {envelope.event_id}: payload is not a {envelope.type}") from error
    if not fact.order_id or not fact.user_id:
        raise Poison(f"event {envelope.event_id}: {envelope.type} without order or user id")
    has_total = fact.HasField("total")
    reason = fact.cancel_reason if isinstance(fact, order_events_pb2.OrderCancelled) else ""
    return Outcome(
        event_id=envelope.event_id,
        order_id=fact.order_id,
        user_id=fact.user_id,
        # From the type, not the fact's state field: that is always the same, by contract.
        order_state="CONFIRMED" if envelope.type == CONFIRMED else "CANCELLED",
        total_minor=fact.total.amount_minor if has_total else None,
        currency=fact.total.currency_code if has_total else "",
        cancel_reason=reason,
    )


class NotificationConsumer:
    def __init__(
        self,
        store: NotificationStore,
        source: Source,
        mailer: Mailer,
        settings: ConsumerSettings = ConsumerSettings(),
        after_send: Callable[[Notification], None] | None = None,
    ) -> None:
        self._store = store
        self._source = source
        self._mailer = mailer
        self.settings = settings
        self._after_send = after_send
        """Called between the send and the mark (the TEST ONLY crash there uses it)."""
        self.counts = Counts()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Fetches and handles batches until `stop`."""
        while not self._stopping.is_set():
            batch = await self._source.fetch(self.settings.batch, self.settings.fetch_wait_seconds)
            for delivery in batch:
                await self.handle(delivery)

    def stop(self) -> None:
        self._stopping.set()

    async def drain(self) -> int:
        """Handles what one fetch returns; how many (the unit tests' step)."""
        batch = await self._source.fetch(self.settings.batch, self.settings.fetch_wait_seconds)
        for delivery in batch:
            await self.handle(delivery)
        return len(batch)

    async def handle(self, delivery: Delivery) -> None:
        """Settles one delivery, exactly once (ack, nak or term); never raises but for
        the after_send hook's own exception (a crash, in tests)."""
        try:
            found = outcome_of(delivery.data)
        except Poison as poison:
            self.counts.parked += 1
            log.error(
                "parked message %s on %s: %s",
                delivery.msg_id or "(no id)",
                delivery.subject,
                poison,
            )
            await delivery.term()
            return
        if isinstance(found, str):
            if not self.counts.skipped[found]:
                log.info("skipping events of type %s (not one this consumer acts on)", found)
            self.counts.skipped[found] += 1
            await delivery.ack()
            return
        try:
            await self._notify(found, delivery)
        except ServiceError as error:  # storage away: the message comes back
            log.warning("event %s: %s; redelivered later", found.event_id, error)
            await delivery.nak(STORAGE_RETRY_SECONDS)

    async def _notify(self, outcome: Outcome, delivery: Delivery) -> None:
        record, created = await self._store.record(outcome)
        if record.state is NotificationState.UNDELIVERABLE and created:
            self.counts.undeliverable += 1
            log.warning(
                "order %s (%s): user %s has no contact address; recorded undeliverable",
                outcome.order_id,
                outcome.order_state,
                outcome.user_id,
            )
            await delivery.ack()
            return
        if record.state in FINAL_STATES:
            self.counts.already_done += 1  # a redelivery, or the order's other event
            await delivery.ack()
            return
        attempts = await self._store.begin_attempt(outcome.event_id)
        if attempts == 0:  # finished meanwhile by another instance
            self.counts.already_done += 1
            await delivery.ack()
            return
        message = email(record, self.settings.sender, time.time())
        try:
            await self._mailer.send(message)
        except SEND_ERRORS as error:
            await self._send_failed(record, attempts, f"{type(error).__name__}: {error}", delivery)
            return
        if self._after_send is not None:
            self._after_send(record)
        await self._store.finish(outcome.event_id, NotificationState.SENT)
        self.counts.sent += 1
        log.info(
            "sent %s of order %s (%s) to %s",
            record.message_id,
            outcome.order_id,
            outcome.order_state,
            record.email_address,
        )
        await delivery.ack()

    async def _send_failed(
        self, record: Notification, attempts: int, error: str, delivery: Delivery
    ) -> None:
        event_id = record.outcome.event_id
        if attempts >= self.settings.max_attempts:
            await self._store.finish(event_id, NotificationState.FAILED, error)
            self.counts.failed += 1
            log.error(
                "gave up on %s of order %s after %d attempts: %s",
                record.message_id,
                record.outcome.order_id,
                attempts,
                error,
            )
            await delivery.ack()
            return
        await self._store.note_error(event_id, error)
        delay = self.settings.retry_delay(attempts)
        self.counts.retried += 1
        log.warning(
            "sending %s failed (attempt %d of %d: %s); again in %.1f s",
            record.message_id,
            attempts,
            self.settings.max_attempts,
            error,
            delay,
        )
        await delivery.nak(delay)
