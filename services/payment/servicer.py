"""PaymentService over gRPC: check the request, call the store, encode the answer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from services.common import validation
from services.common.convert import money, timestamp
from services.common.identity import caller
from services.payment import domain
from services.payment.store import PaymentStore, account_not_found
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_service_pb2 as rpc
from shop.payment.v1 import payment_service_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext


class PaymentServicer(payment_service_pb2_grpc.PaymentServiceServicer):
    def __init__(
        self,
        store: PaymentStore,
        default_authorization_seconds: float = domain.DEFAULT_AUTHORIZATION_SECONDS,
    ) -> None:
        self._store = store
        self._default_authorization_seconds = default_authorization_seconds

    async def GetAccount(
        self, request: rpc.GetAccountRequest, context: Context
    ) -> rpc.GetAccountResponse:
        who = caller(context)
        validation.require_valid(request)
        if request.user_id != who.user_id and not who.is_admin:
            # The same answer as for an account that does not exist: no probing.
            raise account_not_found(request.user_id)
        account = await self._store.account(request.user_id)
        return rpc.GetAccountResponse(
            account=pb.Account(
                user_id=account.user_id,
                available_balance=money(account.available, account.currency),
                held_balance=money(account.held, account.currency),
            )
        )

    async def AuthorizePayment(
        self, request: rpc.AuthorizePaymentRequest, context: Context
    ) -> rpc.AuthorizePaymentResponse:
        who = caller(context)
        violations = validation.violations(request)
        amount = request.amount
        if request.HasField("amount"):
            # A payment's limit (the saga checks order totals against it too), not Money's:
            # a rule on Money.amount_minor would bind every amount, balances included.
            violations.check(
                0 < amount.amount_minor <= domain.MAX_AMOUNT_MINOR,
                "amount.amount_minor",
                f"must be 1..{domain.MAX_AMOUNT_MINOR}",
            )
        violations.raise_if_any()
        # Unset: a caller from before authorization_duration; it gets the default.
        lasts = self._default_authorization_seconds
        if request.HasField("authorization_duration"):
            lasts = request.authorization_duration.ToTimedelta().total_seconds()
        payment = await self._store.authorize(
            *(request.order_id, who.user_id, amount.amount_minor, amount.currency_code),
            authorization_seconds=lasts,
        )
        return rpc.AuthorizePaymentResponse(payment=_payment_to_proto(payment))

    async def CapturePayment(
        self, request: rpc.CapturePaymentRequest, context: Context
    ) -> rpc.CapturePaymentResponse:
        who = caller(context)
        validation.require_valid(request)
        payment = await self._store.capture(request.order_id, who.user_id)
        return rpc.CapturePaymentResponse(payment=_payment_to_proto(payment))

    async def VoidPayment(
        self, request: rpc.VoidPaymentRequest, context: Context
    ) -> rpc.VoidPaymentResponse:
        who = caller(context)
        validation.require_valid(request)
        payment = await self._store.void(request.order_id, who.user_id)
        return rpc.VoidPaymentResponse(payment=_payment_to_proto(payment))

    async def GetPayment(
        self, request: rpc.GetPaymentRequest, context: Context
    ) -> rpc.GetPaymentResponse:
        who = caller(context)
        validation.require_valid(request)
        owner = None if who.is_admin else who.user_id
        payment = await self._store.payment(request.order_id, owner)
        return rpc.GetPaymentResponse(payment=_payment_to_proto(payment))


def _payment_to_proto(p: domain.Payment) -> pb.Payment:
    encoded = pb.Payment(
        order_id=p.order_id,
        user_id=p.user_id,
        amount=money(p.amount_minor, p.currency),
        state=f"PAYMENT_STATE_{p.state.value}",
        create_time=timestamp(p.created_at),
        update_time=timestamp(p.updated_at),
    )
    if p.expire_at is not None:
        encoded.expire_time.CopyFrom(timestamp(p.expire_at))
    return encoded
