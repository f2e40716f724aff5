"""The saga's calls to inventory and payment over gRPC, one method per step.

Each call has a deadline, carries the order's owner as the caller, and either returns or
raises the saga's StepError (whatever went wrong, gRPC's answer or not), which says
whether the failure is worth retrying. Every step is idempotent on the participant (keyed
by the order id), so retrying is always safe.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2

from services.common.errors import ErrorKind, ServiceError
from services.common.identity import outbound_metadata
from services.common.status import error_details
from services.common.tls import CertificateFiles, ReloadingChannel
from services.order.domain import LineItem, Order
from services.order.saga import StepError
from shop.inventory.v1 import inventory_pb2, inventory_service_pb2, inventory_service_pb2_grpc
from shop.money.v1 import money_pb2
from shop.payment.v1 import payment_service_pb2, payment_service_pb2_grpc

# Failures that say nothing about the request, only about the moment: retry them.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


class GrpcParticipants:
    """gRPC clients of inventory and payment, for the saga's steps (SagaParticipants)."""

    def __init__(
        self,
        inventory_target: str,
        payment_target: str,
        timeout: float,
        *,
        authorization_seconds: float | None = None,
        tls_files: CertificateFiles | None = None,
        upstream_name: str = "gateway",
    ) -> None:
        """`authorization_seconds`: how long payment is asked to hold an order's money
        (OrderConfig.authorization_seconds); None leaves it to payment's default.
        `tls_files`: call with mutual TLS, with this certificate, and accept only a server
        whose certificate names `upstream_name`; None: plaintext."""
        self._authorization_seconds = authorization_seconds
        self._inventory_channel = ReloadingChannel(
            inventory_target,
            inventory_service_pb2_grpc.InventoryServiceStub,
            tls_files,
            upstream_name,
        )
        self._payment_channel = ReloadingChannel(
            payment_target, payment_service_pb2_grpc.PaymentServiceStub, tls_files, upstream_name
        )
        self._timeout = timeout

    @property
    def _inventory(self) -> inventory_service_pb2_grpc.InventoryServiceStub:
        return self._inventory_channel.stub()

    @property
    def _payment(self) -> payment_service_pb2_grpc.PaymentServiceStub:
        return self._payment_channel.stub()

    async def close(self) -> None:
        await self._inventory_channel.close()
        await self._payment_channel.close()

    async def reserve(self, order: Order, hold_seconds: float) -> list[LineItem]:
        """Holds the order's stock; returns its line items with their prices."""
        hold = duration_pb2.Duration()
        hold.FromNanoseconds(int(hold_seconds * 1e9))
        request = inventory_service_pb2.ReserveStockRequest(
            order_id=order.order_id,
            items=[
                inventory_pb2.ReservationItem(sku=i.sku, quantity=i.quantity) for i in order.items
            ],
            hold_duration=hold,
        )
        response = await self._call("inventory", self._inventory.ReserveStock, request, order)
        reservation = response.reservation
        if reservation.state not in (
            inventory_pb2.RESERVATION_STATE_HELD,
            inventory_pb2.RESERVATION_STATE_COMMITTED,
        ):
            state = inventory_pb2.ReservationState.Name(reservation.state).removeprefix(
                "RESERVATION_STATE_"
            )
            raise StepError(
                "inventory",
                ServiceError(
                    ErrorKind.ABORTED, f"RESERVATION_{state}", f"the stock hold is {state.lower()}"
                ),
                transient=False,
            )
        return [
            LineItem(i.sku, i.quantity, i.unit_price.amount_minor, i.unit_price.currency_code)
            for i in reservation.items
        ]

    async def commit(self, order: Order) -> None:
        request = inventory_service_pb2.CommitReservationRequest(order_id=order.order_id)
        await self._call("inventory", self._inventory.CommitReservation, request, order)

    async def release(self, order: Order) -> None:
        request = inventory_service_pb2.ReleaseReservationRequest(order_id=order.order_id)
        await self._call("inventory", self._inventory.ReleaseReservation, request, order)

    async def authorize(self, order: Order) -> None:
        request = payment_service_pb2.AuthorizePaymentRequest(
            order_id=order.order_id,
            amount=money_pb2.Money(
                currency_code=order.currency, amount_minor=order.total_minor or 0
            ),
        )
        if self._authorization_seconds is not None:
            request.authorization_duration.FromNanoseconds(int(self._authorization_seconds * 1e9))
        await self._call("payment", self._payment.AuthorizePayment, request, order)

    async def capture(self, order: Order) -> None:
        request = payment_service_pb2.CapturePaymentRequest(order_id=order.order_id)
        await self._call("payment", self._payment.CapturePayment, request, order)

    async def void(self, order: Order) -> None:
        request = payment_service_pb2.VoidPaymentRequest(order_id=order.order_id)
        await self._call("payment", self._payment.VoidPayment, request, order)

    async def _call(self, participant: str, method, request, order: Order):  # type: ignore[no-untyped-def]
        try:
            return await method(
                request, timeout=self._timeout, metadata=outbound_metadata(order.user_id)
            )
        except grpc.aio.AioRpcError as exc:
            details = error_details(exc)
            transient = details.code in TRANSIENT_CODES
            kind = (
                ErrorKind[details.code.name]
                if details.code.name in ErrorKind.__members__
                else ErrorKind.UNAVAILABLE
            )
            raise StepError(participant, details.to_service_error(kind), transient) from exc
        except Exception as exc:
            # The call could not even be made (gRPC refused the metadata, a bug): the same
            # call would fail again, so it is a final failure, which the saga bounds.
            error = ServiceError(
                ErrorKind.INTERNAL,
                "CALL_FAILED",
                f"the call to {participant} could not be made ({type(exc).__name__}: {exc})",
            )
            raise StepError(participant, error, transient=False) from exc
