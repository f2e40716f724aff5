"""The payment service as the shared start-up runs it."""

from __future__ import annotations

import logging

import grpc

from services.payment.config import PaymentConfig
from services.payment.faults import Faults
from services.payment.servicer import PaymentServicer
from services.payment.store import PaymentStore
from shop.payment.v1 import payment_service_pb2, payment_service_pb2_grpc

log = logging.getLogger(__name__)


class PaymentService:
    name = "payment"
    service_names = (payment_service_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name,)

    def __init__(self, config: PaymentConfig) -> None:
        self._faults = Faults(config.lose_replies, config.delay_seconds, config.flaky_calls)
        self.store = PaymentStore(config.db_path, config.db_synchronous)
        if config.seed_file is not None:
            added = self.store.seed(config.seed_file)
            log.info("seeded %d accounts from %s", added, config.seed_file)

    def register(self, server: grpc.aio.Server) -> None:
        payment_service_pb2_grpc.add_PaymentServiceServicer_to_server(
            PaymentServicer(self.store, self._faults), server
        )

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.store.close()


async def create(config: PaymentConfig) -> PaymentService:
    return PaymentService(config)
