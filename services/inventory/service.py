"""The inventory service as the shared start-up runs it: store, servicer, sweeper (hold
expiry and retention)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from services.common import relay
from services.inventory.config import InventoryConfig
from services.inventory.servicer import InventoryServicer
from services.inventory.store import InventoryStore
from shop.inventory.v1 import inventory_service_pb2, inventory_service_pb2_grpc

log = logging.getLogger(__name__)


class InventoryService:
    name = "inventory"
    service_names = (
        inventory_service_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name,
    )
    interceptors = ()

    def __init__(
        self,
        config: InventoryConfig,
        store: InventoryStore,
        publishers: relay.PublisherFactory | None = None,
    ) -> None:
        self._publishers = publishers
        self.relay: relay.Relay | None = None
        self._config = config
        self.store = store
        self._sweeper: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server(
            InventoryServicer(self.store), server
        )

    async def start(self) -> None:
        # Before the service reports SERVING, so no caller routed here finds the catalog empty.
        if self._config.seed_file is not None:
            added = await self.store.seed(self._config.seed_file)
            log.info("seeded %d products from %s", added, self._config.seed_file)
        self._sweeper = asyncio.create_task(self._sweep_forever())
        # The outbox relay, only when a NATS server is named and a publisher given.
        self.relay = await relay.started(self.store, self._config, self._publishers)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.relay is not None:  # after the last write that may append events
            await self.relay.stop()
        await self.store.aclose()

    async def _sweep_forever(self) -> None:
        """Gives back holds nobody committed (an order service may have died for good), and
        prunes reservations that hold nothing past the retention."""
        while True:
            await asyncio.sleep(self._config.sweep_interval_seconds)
            try:
                expired = await self.store.expire_due()
                pruned = await self.store.prune(self._config.retention_seconds)
            except Exception:
                log.exception("sweeping expired holds failed; trying again later")
                continue
            if expired:
                log.info("%d holds expired and gave their stock back", expired)
            if pruned:
                log.info("pruned %d reservations past the retention", pruned)


async def create(
    config: InventoryConfig, publishers: relay.PublisherFactory | None = None
) -> InventoryService:
    """The service on its store, opened (and migrated) without blocking the event loop."""
    store = await InventoryStore.open(
        config.db_location,
        password_file=config.db_password_file,
        synchronous=config.db_synchronous,
        pool=config.db_pool,
        events_enabled=config.events,
    )
    return InventoryService(config, store, publishers)
