"""What the outbox's tests share: a publisher that records (or fails) in place of
JetStream, events appended in transactions of their own, and the outbox's rows."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from services.common import db, outbox
from services.common.config import StoreConfig
from services.common.database import Tx
from services.common.relay import RelaySettings
from tests.stores import rows

SUBJECT = "shop.test.v1.Happened"
SETTINGS = dataclasses.replace(
    RelaySettings.of(StoreConfig()),
    poll_interval_seconds=0.05,
    max_backoff_seconds=0.05,
)
"""The service's defaults, polling and backing off fast."""


def envelope(event_id: str, sequence: int, occurred_at: float) -> bytes:
    """An envelope that shows what `append` handed its builder."""
    return f"{event_id}|{sequence}|{occurred_at!r}".encode()


class FakePublisher:
    """Records what it is sent, in order, as (subject, msg_id, data); while `down`,
    refuses every publish as a NATS that is away would; a publish of an id in `fail_on`
    fails, one in `hang_on` never answers; `before(msg_id)` runs before each publish (a
    test's hook into the middle of a batch). Each publish yields to the loop once before
    it answers, as a round trip would, so publishes made at once are in flight together:
    `most_in_flight` counts them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self.tried: list[str] = []
        self.down = False
        self.fail_on: set[str] = set()
        self.hang_on: set[str] = set()
        self.before: Callable[[str], Awaitable[None]] | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    async def publish(self, subject: str, msg_id: str, data: bytes) -> None:
        self.tried.append(msg_id)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.before is not None:
                await self.before(msg_id)
            await asyncio.sleep(0)  # the round trip
            if msg_id in self.hang_on:
                await asyncio.Event().wait()
            if self.down or msg_id in self.fail_on:
                raise ConnectionError("no PubAck: NATS is unreachable")
            self.sent.append((subject, msg_id, data))
        finally:
            self.in_flight -= 1

    @property
    def ids(self) -> list[str]:
        return [msg_id for _, msg_id, _ in self.sent]


async def append(store: db.Store, *aggregates: str) -> list[outbox.Appended]:
    """One event for each of `aggregates`, in one transaction, in that order."""

    async def write(tx: Tx) -> list[outbox.Appended]:
        return [
            await outbox.append(tx, aggregate_id=a, subject=SUBJECT, envelope_for=envelope)
            for a in aggregates
        ]

    return await store.db.write(write)


async def events(store: db.Store) -> list[tuple[str, str, int, bool]]:
    """Every event in the outbox as (event_id, aggregate_id, sequence, sent), in the
    relay's order."""
    found = await rows(
        store,
        "SELECT event_id, aggregate_id, sequence, sent_at IS NOT NULL FROM outbox ORDER BY rowid",
    )
    return [(str(e), str(a), int(str(s)), bool(sent)) for e, a, s, sent in found]


async def expire_lease(store: db.Store) -> None:
    """The relay lease runs out (as after its seconds pass with nobody renewing it)."""

    async def expire(tx: Tx) -> None:
        await tx.execute("UPDATE outbox_relay_lease SET expires_at = 0")

    await store.db.write(expire)
