"""The read model's stream source on NATS JetStream: a durable pull consumer of every
event of SHOP_EVENTS (services.common.jetstream declares it, idempotently, at each
(re)connection), and the stream's last sequence for the lag."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence

from services.common.jetstream import (
    NATS_ERRORS,
    STREAM,
    ConsumerSpec,
    Delivery,
    JetStreamConnection,
    PullConsumer,
)
from services.reporting import service
from services.reporting.config import ReportingConfig

log = logging.getLogger(__name__)


class NatsSource:
    """`consumer.Source` on a durable pull consumer of its own connection."""

    def __init__(self, connection: JetStreamConnection, durable: str) -> None:
        self.connection = connection
        self.durable = durable
        self._consumer = PullConsumer(connection, durable)

    async def fetch(self, batch: int, wait_seconds: float) -> Sequence[Delivery]:
        return await self._consumer.fetch(batch, wait_seconds)

    async def last_sequence(self) -> int | None:
        if not self.connection.ready:
            return None
        try:
            info = await self.connection.js.stream_info(STREAM)
        except NATS_ERRORS:
            return None
        return int(info.state.last_seq)

    async def delete_consumer(self) -> None:
        """Removes the durable from the server (a rebuild's, once it is done)."""
        if self.connection.ready:
            with contextlib.suppress(*NATS_ERRORS):
                await self.connection.js.delete_consumer(STREAM, self.durable)
                return
        # A durable is kept until it is deleted: say which one is left behind.
        log.warning("could not delete the consumer %s; delete it by hand", self.durable)

    async def close(self) -> None:
        await self._consumer.close()
        await self.connection.close()


async def open_source(
    config: ReportingConfig, durable: str = "", inactive_threshold_seconds: float | None = None
) -> NatsSource:
    """A source on the durable `durable` (default: the config's consumer_name), every
    event from the stream's first (deliver policy ALL) for a new durable; with
    `inactive_threshold_seconds`, one the server removes once unused that long."""
    name = durable or config.consumer_name
    settings = dataclasses.replace(config.jetstream, name=f"reporting:{name}")
    spec = ConsumerSpec(
        durable=name,
        ack_wait_seconds=config.consumer_ack_wait_seconds,
        inactive_threshold_seconds=inactive_threshold_seconds,
    )
    connection = JetStreamConnection(settings, [spec])
    await connection.start()
    return NatsSource(connection, name)


async def create(config: ReportingConfig) -> service.ReportingService:
    """The reporting service fed from NATS (what `python -m services.reporting` runs)."""
    return await service.create(config, open_source)
