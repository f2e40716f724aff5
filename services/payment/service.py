"""The payment service as the shared start-up runs it: store, servicer, sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from services.common import relay
from services.payment.config import PaymentConfig
from services.payment.faults import FaultInterceptor, Faults
from services.payment.servicer import PaymentServicer
from services.payment.store import PaymentStore
from shop.payment.v1 import payment_service_pb2, payment_service_pb2_grpc

log = logging.getLogger(__name__)


class PaymentService:
    name = "payment"
    service_names = (payment_service_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name,)

    def __init__(
        self,
        config: PaymentConfig,
        store: PaymentStore,
        publishers: relay.PublisherFactory | None = None,
    ) -> None:
        self._publishers = publishers
        self.relay: relay.Relay | None = None
        self._config = config
        self.interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()
        if config.any_fault:
            faults = Faults(config.lose_replies, config.delay_seconds, config.flaky_calls)
            self.interceptors = (FaultInterceptor(faults),)
        self.store = store
        self._sweeper: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        servicer = PaymentServicer(self.store, self._config.default_authorization_seconds)
        payment_service_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)

    async def start(self) -> None:
        # Before the service reports SERVING, so no caller routed here finds no account.
        if self._config.seed_file is not None:
            added = await self.store.seed(self._config.seed_file)
            log.info("seeded %d accounts from %s", added, self._config.seed_file)
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
        """Gives back money nobody captured (its order service may have died for good), and
        prunes payments that hold nothing past the retention."""
        while True:
            await asyncio.sleep(self._config.sweep_interval_seconds)
            try:
                expired = await self.store.expire_due()
                pruned = await self.store.prune(self._config.retention_seconds)
            except Exception:
                log.exception("sweeping expired authorizations failed; trying again later")
                continue
            if expired:
                log.info("%d authorizations expired and gave their money back", expired)
            if pruned:
                log.info("pruned %d payments past the retention", pruned)


async def create(
    config: PaymentConfig, publishers: relay.PublisherFactory | None = None
) -> PaymentService:
    """The service on its store, opened (and migrated) without blocking the event loop."""
    store = await PaymentStore.open(
        config.db_location,
        password_file=config.db_password_file,
        synchronous=config.db_synchronous,
        pool=config.db_pool,
        events_enabled=config.events,
    )
    return PaymentService(config, store, publishers)
