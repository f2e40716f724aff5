"""The notification consumer's message source on JetStream: the durable pull consumer
`notification` on SHOP_EVENTS, order events only, declared (idempotently) by the
service's own connection at every (re)connection (services.common.jetstream)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from services.common.jetstream import ConsumerSpec, JetStreamConnection, PullConsumer
from services.notification.config import NotificationConfig
from services.notification.consumer import FILTER_SUBJECT, Source
from services.notification.service import NotificationService, create

DURABLE = "notification"
"""The durable consumer's name: the server keeps its position under it."""


def consumer_spec(config: NotificationConfig) -> ConsumerSpec:
    # max_deliver unlimited: the consumer bounds its own retries (send_max_attempts, in
    # the record, which a restart does not reset) and terminates poison at once.
    return ConsumerSpec(
        durable=DURABLE,
        filter_subject=FILTER_SUBJECT,
        ack_wait_seconds=config.consumer_ack_wait_seconds,
        max_deliver=-1,
    )


async def open_source(
    config: NotificationConfig,
) -> tuple[Source, Callable[[], Awaitable[None]]]:
    """The pull consumer on a connection of its own, connecting in the background (a
    fetch returns nothing until it is up), and what closes both."""
    settings = dataclasses.replace(config.jetstream, name="notification")
    connection = JetStreamConnection(settings, consumers=[consumer_spec(config)])
    await connection.start()
    consumer = PullConsumer(connection, DURABLE)

    async def close() -> None:
        await consumer.close()
        await connection.close()

    return consumer, close


async def create_on_jetstream(config: NotificationConfig) -> NotificationService:
    """The service with its consumer on JetStream (when nats_url is set): what its
    process runs."""
    return await create(config, open_source)
