"""PaymentService against a real server in this process (port 0), over a grpc.aio channel."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from shop.money.v1.money_pb2 import Money
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_service_pb2 as rpc
from shop.payment.v1.payment_service_pb2_grpc import PaymentServiceStub
from tests.helpers import ADMIN, rejected, user

ALICE = user("alice")


@pytest.fixture
def payment(payment_channel: grpc.aio.Channel) -> PaymentServiceStub:
    return PaymentServiceStub(payment_channel)


def authorize(order_id: str, amount: int, currency: str = "USD") -> rpc.AuthorizePaymentRequest:
    return rpc.AuthorizePaymentRequest(
        order_id=order_id, amount=Money(currency_code=currency, amount_minor=amount)
    )


async def balance(payment: PaymentServiceStub, user_id: str = "alice") -> tuple[int, int]:
    account = (
        await payment.GetAccount(rpc.GetAccountRequest(user_id=user_id), metadata=user(user_id))
    ).account
    return account.available_balance.amount_minor, account.held_balance.amount_minor


async def test_authorize_then_capture_takes_the_money_once(payment: PaymentServiceStub) -> None:
    held = (await payment.AuthorizePayment(authorize("o1", 2500), metadata=ALICE)).payment
    assert (held.state, held.user_id, held.amount.amount_minor) == (
        pb.PAYMENT_STATE_AUTHORIZED,
        "alice",
        2500,
    )
    assert await balance(payment) == (97_500, 2500)
    again = (await payment.AuthorizePayment(authorize("o1", 2500), metadata=ALICE)).payment
    assert again.state == pb.PAYMENT_STATE_AUTHORIZED
    assert await balance(payment) == (97_500, 2500)
    for _ in range(2):
        captured = (
            await payment.CapturePayment(rpc.CapturePaymentRequest(order_id="o1"), metadata=ALICE)
        ).payment
        assert captured.state == pb.PAYMENT_STATE_CAPTURED
    assert await balance(payment) == (97_500, 0)
    error = await rejected(
        payment.VoidPayment(rpc.VoidPaymentRequest(order_id="o1"), metadata=ALICE)
    )
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PAYMENT_ALREADY_CAPTURED",
    )
    got = (await payment.GetPayment(rpc.GetPaymentRequest(order_id="o1"), metadata=ALICE)).payment
    assert got.state == pb.PAYMENT_STATE_CAPTURED


async def test_void_gives_the_money_back(payment: PaymentServiceStub) -> None:
    await payment.AuthorizePayment(authorize("o1", 2500), metadata=ALICE)
    for _ in range(2):
        voided = (
            await payment.VoidPayment(rpc.VoidPaymentRequest(order_id="o1"), metadata=ALICE)
        ).payment
        assert voided.state == pb.PAYMENT_STATE_VOIDED
    assert await balance(payment) == (100_000, 0)
    error = await rejected(
        payment.CapturePayment(rpc.CapturePaymentRequest(order_id="o1"), metadata=ALICE)
    )
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_VOIDED")


async def test_void_before_authorize_blocks_a_late_authorize(payment: PaymentServiceStub) -> None:
    await payment.VoidPayment(rpc.VoidPaymentRequest(order_id="o1"), metadata=ALICE)
    error = await rejected(payment.AuthorizePayment(authorize("o1", 2500), metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_VOIDED")
    assert await balance(payment) == (100_000, 0)


async def test_insufficient_funds_is_a_recorded_decline(payment: PaymentServiceStub) -> None:
    bob = user("bob")
    for _ in range(2):
        error = await rejected(payment.AuthorizePayment(authorize("o1", 2001), metadata=bob))
        assert (error.code, error.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "INSUFFICIENT_FUNDS",
        )
    assert await balance(payment, "bob") == (2000, 0)
    declined = (
        await payment.GetPayment(rpc.GetPaymentRequest(order_id="o1"), metadata=bob)
    ).payment
    assert declined.state == pb.PAYMENT_STATE_DECLINED


async def test_concurrent_authorizations_never_overdraw(payment: PaymentServiceStub) -> None:
    bob = user("bob")  # 2000 available: only two of these fit
    results = await asyncio.gather(
        *(payment.AuthorizePayment(authorize(f"o{n}", 1000), metadata=bob) for n in range(10)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 2
    assert await balance(payment, "bob") == (0, 2000)


async def test_account_problems(payment: PaymentServiceStub) -> None:
    error = await rejected(payment.AuthorizePayment(authorize("o1", 100), metadata=user("nobody")))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_FOUND")
    error = await rejected(payment.AuthorizePayment(authorize("o2", 100, "EUR"), metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH")
    await payment.AuthorizePayment(authorize("o3", 100), metadata=ALICE)
    error = await rejected(payment.AuthorizePayment(authorize("o3", 200), metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "PAYMENT_MISMATCH")


async def test_users_see_only_their_own_account_and_payments(payment: PaymentServiceStub) -> None:
    await payment.AuthorizePayment(authorize("o1", 100), metadata=ALICE)
    bob = user("bob")
    error = await rejected(payment.GetAccount(rpc.GetAccountRequest(user_id="alice"), metadata=bob))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    # Indistinguishable from an account that does not exist, so ids cannot be probed.
    ghost = await rejected(payment.GetAccount(rpc.GetAccountRequest(user_id="zed"), metadata=ADMIN))
    assert (error.code, error.reason, error.message, error.metadata) == (
        ghost.code,
        ghost.reason,
        ghost.message.replace("zed", "alice"),
        {k: v.replace("zed", "alice") for k, v in ghost.metadata.items()},
    )
    for call in (
        payment.GetPayment(rpc.GetPaymentRequest(order_id="o1"), metadata=bob),
        payment.CapturePayment(rpc.CapturePaymentRequest(order_id="o1"), metadata=bob),
        payment.VoidPayment(rpc.VoidPaymentRequest(order_id="o1"), metadata=bob),
    ):
        error = await rejected(call)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")
    assert await balance(payment) == (99_900, 100)
    admin_view = await payment.GetAccount(rpc.GetAccountRequest(user_id="alice"), metadata=ADMIN)
    assert admin_view.account.held_balance.amount_minor == 100


async def test_every_method_needs_a_caller(payment: PaymentServiceStub) -> None:
    error = await rejected(payment.AuthorizePayment(authorize("o1", 100)))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (authorize("", 100), "order_id"),
        (authorize("o1", 0), "amount.amount_minor"),
        (authorize("o1", -5), "amount.amount_minor"),
        (authorize("o1", 100_000_001), "amount.amount_minor"),
        (authorize("o1", 100, "usd"), "amount.currency_code"),
        (authorize("o1", 100, ""), "amount.currency_code"),
        (rpc.AuthorizePaymentRequest(order_id="o1"), "amount"),
    ],
)
async def test_authorize_validation(
    payment: PaymentServiceStub, request_: rpc.AuthorizePaymentRequest, field: str
) -> None:
    error = await rejected(payment.AuthorizePayment(request_, metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [v.field for v in error.violations] == [field]


@pytest.mark.parametrize("method", ["GetPayment", "CapturePayment", "VoidPayment", "GetAccount"])
async def test_id_validation(payment: PaymentServiceStub, method: str) -> None:
    requests = {
        "GetPayment": rpc.GetPaymentRequest(order_id="bad id"),
        "CapturePayment": rpc.CapturePaymentRequest(order_id=""),
        "VoidPayment": rpc.VoidPaymentRequest(order_id="x" * 65),
        "GetAccount": rpc.GetAccountRequest(user_id=""),
    }
    error = await rejected(getattr(payment, method)(requests[method], metadata=ALICE))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert len(error.violations) == 1
