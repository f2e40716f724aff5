"""The notification service as the shared start-up runs it: store, servicer, and the
consumer of order events (only with nats_url set)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

import grpc

from services.notification.config import NotificationConfig
from services.notification.consumer import NotificationConsumer, Source
from services.notification.domain import Notification
from services.notification.mailer import SmtpMailer
from services.notification.servicer import NotificationServicer
from services.notification.store import NotificationStore
from shop.notification.v1 import notification_service_pb2, notification_service_pb2_grpc

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 70
"""The exit code of the TEST ONLY crash between send and mark (exit_after_sends)."""

SourceFactory = Callable[
    [NotificationConfig], Awaitable[tuple[Source, Callable[[], Awaitable[None]]]]
]
"""Opens the consumer's message source for the settings; returns it and its closer."""


class NotificationService:
    name = "notification"
    service_names = (
        notification_service_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name,
    )
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()

    def __init__(
        self,
        config: NotificationConfig,
        store: NotificationStore,
        sources: SourceFactory | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self._sources = sources
        self.consumer: NotificationConsumer | None = None
        self._consuming: asyncio.Task[None] | None = None
        self._close_source: Callable[[], Awaitable[None]] | None = None
        self._sends = 0

    def register(self, server: grpc.aio.Server) -> None:
        servicer = NotificationServicer(self.store)
        notification_service_pb2_grpc.add_NotificationServiceServicer_to_server(servicer, server)

    async def start(self) -> None:
        if self._config.seed_file is not None:
            added = await self.store.seed(self._config.seed_file)
            log.info("seeded %d contact addresses from %s", added, self._config.seed_file)
        if self._sources is None or not self._config.nats_url:
            log.info("no nats_url: no order events are consumed, no notification is sent")
            return
        source, self._close_source = await self._sources(self._config)
        mailer = SmtpMailer(
            self._config.smtp_host, self._config.smtp_port, self._config.smtp_timeout_seconds
        )
        self.consumer = NotificationConsumer(
            self.store, source, mailer, self._config.consumer_settings, self._after_send
        )
        self._consuming = asyncio.create_task(self._consume(self.consumer), name="notifications")

    def _after_send(self, notification: Notification) -> None:
        self._sends += 1
        if self._config.exit_after_sends and self._sends >= self._config.exit_after_sends:
            log.warning(
                "TEST ONLY: exiting after sending %s, before marking it", notification.message_id
            )
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)

    async def _consume(self, consumer: NotificationConsumer) -> None:
        # Each fetch and message is settled inside run; only a bug gets here, and the
        # consumer starts again rather than leaving the service serving with no consumer.
        while True:
            try:
                await consumer.run()
                return
            except Exception:
                log.exception("the notification consumer failed; starting it again in 1 s")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
            log.info("notification consumer stopping; since its start: %s", self.consumer.counts)
        if self._consuming is not None:
            self._consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consuming
        if self._close_source is not None:
            await self._close_source()
        await self.store.aclose()


async def create(
    config: NotificationConfig, sources: SourceFactory | None = None
) -> NotificationService:
    """The service on its store, opened (and migrated) without blocking the event loop."""
    store = await NotificationStore.open(
        config.db_location,
        password_file=config.db_password_file,
        synchronous=config.db_synchronous,
        pool=config.db_pool,
    )
    return NotificationService(config, store, sources)
