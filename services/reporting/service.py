"""The reporting service as the shared start-up runs it: store, servicer, and the consumer
that applies SHOP_EVENTS to the read model (only with nats_url and a source)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc

from services.reporting import consumer
from services.reporting.config import ReportingConfig
from services.reporting.names import InventoryNames
from services.reporting.servicer import ReportingServicer
from services.reporting.store import ReportingStore
from shop.reporting.v1 import reporting_service_pb2, reporting_service_pb2_grpc

log = logging.getLogger(__name__)


class ClosableSource(consumer.Source, Protocol):
    async def close(self) -> None: ...


SourceFactory = Callable[[ReportingConfig], Awaitable[ClosableSource]]
"""Opens the stream source a config names (services.reporting.nats_source.open_source)."""


class ReportingService:
    name = "reporting"
    service_names = (
        reporting_service_pb2.DESCRIPTOR.services_by_name["ReportingService"].full_name,
    )
    interceptors = ()

    def __init__(
        self,
        config: ReportingConfig,
        store: ReportingStore,
        sources: SourceFactory | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self._sources = sources
        self.source: ClosableSource | None = None
        self._names = InventoryNames(
            config.inventory_target,
            config.call_timeout_seconds,
            config.tls_files,
            config.upstream_name,
        )
        self._stop = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        reporting_service_pb2_grpc.add_ReportingServiceServicer_to_server(
            ReportingServicer(self.store, lambda: self.source), server
        )

    async def start(self) -> None:
        if not self._config.nats_url or self._sources is None:
            log.warning("no NATS server named: the read model is not fed")
            return
        self.source = await self._sources(self._config)
        projector = consumer.Projector(
            self.store, self._names, retry_delay_seconds=self._config.consumer_retry_seconds
        )
        self._consumer = asyncio.create_task(
            consumer.run(
                projector,
                self.source,
                batch=self._config.consumer_batch_size,
                wait_seconds=self._config.consumer_wait_seconds,
                lag_log_interval_seconds=self._config.lag_log_interval_seconds,
                stop=self._stop,
            ),
            name="reporting-consumer",
        )

    async def stop(self) -> None:
        self._stop.set()
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        if self.source is not None:
            await self.source.close()
        await self._names.close()
        await self.store.aclose()


async def open_store(config: ReportingConfig) -> ReportingStore:
    return await ReportingStore.open(
        config.db_location,
        password_file=config.db_password_file,
        synchronous=config.db_synchronous,
        pool=config.db_pool,
    )


async def create(config: ReportingConfig, sources: SourceFactory | None = None) -> ReportingService:
    """The service on its store, opened (and migrated) without blocking the event loop;
    fed from the source `sources` opens (services.reporting.nats_source.create: NATS)."""
    return ReportingService(config, await open_store(config), sources)
