"""The order service as the shared start-up runs it: store, saga runner, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from services.common import relay
from services.order.config import OrderConfig
from services.order.participants import GrpcParticipants
from services.order.saga import SagaRunner, SagaSettings
from services.order.servicer import OrderServicer
from services.order.store import OrderStore
from shop.order.v1 import order_service_pb2, order_service_pb2_grpc

log = logging.getLogger(__name__)


class OrderService:
    name = "order"
    service_names = (order_service_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name,)
    interceptors = ()

    def __init__(
        self,
        config: OrderConfig,
        store: OrderStore,
        publishers: relay.PublisherFactory | None = None,
    ) -> None:
        self._publishers = publishers
        self.relay: relay.Relay | None = None
        self._config = config
        self.store = store
        self._participants = GrpcParticipants(
            config.inventory_target,
            config.payment_target,
            config.call_timeout_seconds,
            authorization_seconds=config.authorization_seconds,
            tls_files=config.tls_files,
            upstream_name=config.upstream_name,
        )
        self.saga = SagaRunner(
            self.store,
            self._participants,
            SagaSettings.of(config),
        )
        self._servicer = OrderServicer(self.store, self.saga, config)
        self._recovery: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        order_service_pb2_grpc.add_OrderServiceServicer_to_server(self._servicer, server)

    async def start(self) -> None:
        # Sagas left unfinished by an earlier process whose leases have run out (a process
        # that stopped cleanly gave its leases up; a crashed one's expire after a lease).
        await self.saga.adopt()
        self._recovery = asyncio.create_task(self._recover_forever())
        # The outbox relay, only when a NATS server is named and a publisher given.
        self.relay = await relay.started(self.store, self._config, self._publishers)

    async def stop(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        await self._servicer.placed()
        await self.saga.stop()
        await self._participants.close()
        if self.relay is not None:  # after the last write that may append events
            await self.relay.stop()
        await self.store.aclose()

    async def _recover_forever(self) -> None:
        """Adopts sagas whose owner's lease has run out (the owner died or is stuck)."""
        interval = self._config.recovery_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.saga.adopt()
                await self._prune()
                parked = await self.store.parked()
                if parked:  # said again every interval until an operator acts
                    log.warning(
                        "%d sagas need attention (parked), oldest %s: %s",
                        *(len(parked), parked[0].order_id, parked[0].reason),
                    )
            except Exception:
                log.exception("resuming idle sagas failed; trying again later")

    async def _prune(self) -> None:
        """Deletes cancelled orders past the retention time, a batch per round (a read
        first, so that a round with nothing to prune takes no write lock)."""
        retention = self._config.retention_seconds
        if await self.store.prunable(retention):
            pruned = await self.store.prune(retention)
            log.info("pruned %d cancelled orders older than the retention time", pruned)


async def create(
    config: OrderConfig, publishers: relay.PublisherFactory | None = None
) -> OrderService:
    """The service on its store, opened (and migrated) without blocking the event loop."""
    store = await OrderStore.open(
        config.db_location,
        password_file=config.db_password_file,
        synchronous=config.db_synchronous,
        pool=config.db_pool,
        events_enabled=config.events,
    )
    return OrderService(config, store, publishers)
