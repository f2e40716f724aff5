"""PaymentService against a real server in this process (port 0), over a grpc.aio channel."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import sqlite3
import time

import grpc
import pytest
from google.protobuf import duration_pb2

from services.common.validation import MAX_AUTHORIZATION_SECONDS
from services.payment.config import PaymentConfig
from services.payment.domain import PaymentState
from services.payment.faults import FaultInterceptor
from services.payment.service import create as create_payment
from services.payment.store import PaymentStore
from shop.money.v1.money_pb2 import Money
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_service_pb2 as rpc
from shop.payment.v1.payment_service_pb2_grpc import PaymentServiceStub
from tests.helpers import ADMIN, rejected, serving, user

ALICE = user("alice")
DAY = 86_400.0
WAIT_SECONDS = 10.0  # the sweeper runs every second: ten times what it needs


@pytest.fixture
def payment(payment_channel: grpc.aio.Channel) -> PaymentServiceStub:
    return PaymentServiceStub(payment_channel)


def authorize(
    order_id: str, amount: int, currency: str = "USD", seconds: float | None = None
) -> rpc.AuthorizePaymentRequest:
    request = rpc.AuthorizePaymentRequest(
        order_id=order_id, amount=Money(currency_code=currency, amount_minor=amount)
    )
    if seconds is not None:
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(int(seconds * 1e9))
        request.authorization_duration.CopyFrom(duration)
    return request


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
    # One reason, one code: the same NOT_FOUND as GetAccount's for an account that is not there.
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
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
        (authorize("o1", 100, seconds=0), "authorization_duration"),
        (authorize("o1", 100, seconds=0.5), "authorization_duration"),
        (authorize("o1", 100, seconds=MAX_AUTHORIZATION_SECONDS + 1), "authorization_duration"),
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


async def held_until_zero(payment: PaymentServiceStub, user_id: str = "alice") -> tuple[int, int]:
    """The balance once nothing is held any more (bounded: fails after WAIT_SECONDS)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while (found := await balance(payment, user_id))[1] != 0:
        assert time.monotonic() < deadline, f"still held after {WAIT_SECONDS}s: {found}"
        await asyncio.sleep(0.05)
    return found


async def state_of(payment: PaymentServiceStub, order_id: str) -> pb.Payment:
    found: rpc.GetPaymentResponse = await payment.GetPayment(
        rpc.GetPaymentRequest(order_id=order_id), metadata=ALICE
    )
    return found.payment


async def test_an_authorization_not_captured_in_time_expires(payment: PaymentServiceStub) -> None:
    """Held for 1 s, then nobody calls: the sweeper gives the money back by itself, and the
    payment can be neither captured nor authorized again; a void is harmless."""
    held = await payment.AuthorizePayment(authorize("o1", 2500, seconds=1), metadata=ALICE)
    lifetime = held.payment.expire_time.ToMicroseconds() - held.payment.create_time.ToMicroseconds()
    assert (held.payment.state, lifetime) == (pb.PAYMENT_STATE_AUTHORIZED, 1_000_000)
    assert await balance(payment) == (97_500, 2500)
    assert await held_until_zero(payment) == (100_000, 0)  # no call in between: the sweeper
    expired = await state_of(payment, "o1")
    assert (expired.state, expired.HasField("expire_time")) == (pb.PAYMENT_STATE_EXPIRED, False)
    error = await rejected(
        payment.CapturePayment(rpc.CapturePaymentRequest(order_id="o1"), metadata=ALICE)
    )
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_EXPIRED")
    voided = await payment.VoidPayment(rpc.VoidPaymentRequest(order_id="o1"), metadata=ALICE)
    assert voided.payment.state == pb.PAYMENT_STATE_EXPIRED  # nothing to give back twice
    error = await rejected(
        payment.AuthorizePayment(authorize("o1", 2500, seconds=1), metadata=ALICE)
    )
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_EXPIRED")
    assert await balance(payment) == (100_000, 0)


@pytest.fixture
async def unswept(tmp_path: pathlib.Path, seed_file: pathlib.Path) -> PaymentServiceStub:
    """A payment service whose sweeper would run only after an hour: every expiry seen
    within a test was made by the call itself."""
    config = PaymentConfig(
        db_path=tmp_path / "unswept.db", seed_file=seed_file, sweep_interval_seconds=3600
    )
    async with serving(await create_payment(config)) as served:
        yield PaymentServiceStub(served.channel)


async def until_past(expire_time: float) -> None:
    """Waits until the wall clock is past `expire_time` (what the store compares with)."""
    await asyncio.sleep(max(0.0, expire_time - time.time()) + 0.05)
    assert time.time() > expire_time


@pytest.mark.parametrize("call", ["capture", "authorize", "void"])
async def test_each_call_expires_a_due_authorization_itself(
    unswept: PaymentServiceStub, call: str
) -> None:
    held = await unswept.AuthorizePayment(authorize("o1", 2500, seconds=1), metadata=ALICE)
    await until_past(held.payment.expire_time.ToMicroseconds() / 1e6)
    assert await balance(unswept) == (97_500, 2500)  # nothing swept it
    if call == "void":
        voided = await unswept.VoidPayment(rpc.VoidPaymentRequest(order_id="o1"), metadata=ALICE)
        assert voided.payment.state == pb.PAYMENT_STATE_EXPIRED
    else:
        refused = (
            unswept.CapturePayment(rpc.CapturePaymentRequest(order_id="o1"), metadata=ALICE)
            if call == "capture"
            else unswept.AuthorizePayment(authorize("o1", 2500, seconds=1), metadata=ALICE)
        )
        error = await rejected(refused)
        assert (error.code, error.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "PAYMENT_EXPIRED",
        )
    # The refusal did not undo the expiry: the money is back and stays back.
    assert await balance(unswept) == (100_000, 0)
    assert (await state_of(unswept, "o1")).state == pb.PAYMENT_STATE_EXPIRED


async def test_an_authorization_without_a_duration_lasts_the_default(
    payment: PaymentServiceStub,
) -> None:
    held = (await payment.AuthorizePayment(authorize("o1", 100), metadata=ALICE)).payment
    lifetime = held.expire_time.ToSeconds() - held.create_time.ToSeconds()
    assert lifetime == PaymentConfig().default_authorization_seconds == DAY


async def one_of_each(store: PaymentStore, prefix: str, at: float) -> None:
    await store.authorize(
        f"{prefix}captured", "alice", 100, "USD", now=at, authorization_seconds=10 * DAY
    )
    await store.capture(f"{prefix}captured", "alice", at)
    await store.authorize(
        f"{prefix}voided", "alice", 200, "USD", now=at, authorization_seconds=10 * DAY
    )
    await store.void(f"{prefix}voided", "alice", at)
    await store.void(f"{prefix}tombstone", "alice", at)
    with pytest.raises(Exception, match="cannot cover"):
        await store.authorize(
            f"{prefix}declined", "bob", 5000, "USD", now=at, authorization_seconds=10 * DAY
        )
    await store.authorize(f"{prefix}expired", "alice", 300, "USD", now=at, authorization_seconds=1)
    assert await store.expire_due(at + 1) == 1
    await store.authorize(
        f"{prefix}authorized", "alice", 400, "USD", now=at, authorization_seconds=10 * DAY
    )


def payment_ids(path: pathlib.Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT order_id FROM payments")}


async def test_retention_prunes_finished_payments_and_never_a_capture(
    tmp_path: pathlib.Path, seed_file: pathlib.Path
) -> None:
    store = PaymentStore(tmp_path / "payment.db")
    await store.seed(seed_file)
    await one_of_each(store, "old-", at=1000.0)
    await one_of_each(store, "new-", at=1000.0 + 5 * DAY)
    before = (await store.account("alice"), await store.account("bob"))
    # Seven days after the new ones: the old ones are 12 days old, the new ones 7.
    pruned = await store.prune(7 * DAY + 1, now=1000.0 + 12 * DAY)
    assert pruned == 4
    kept = {"captured", "authorized"}
    assert payment_ids(tmp_path / "payment.db") == {f"old-{k}" for k in kept} | {
        f"new-{k}" for k in ("captured", "voided", "tombstone", "declined", "expired", "authorized")
    }
    assert (await store.account("alice"), await store.account("bob")) == before  # no money moved
    assert await store.prune(7 * DAY, now=1000.0 + 100 * DAY) == 4
    assert {
        i.removeprefix("old-").removeprefix("new-") for i in payment_ids(tmp_path / "payment.db")
    } == kept
    assert (await store.payment("old-captured")).state is PaymentState.CAPTURED
    store.close()


async def test_the_sweeper_prunes_past_retention(
    tmp_path: pathlib.Path, seed_file: pathlib.Path
) -> None:
    config = PaymentConfig(db_path=tmp_path / "short.db", seed_file=seed_file, retention_seconds=1)
    async with serving(await create_payment(config)) as served:
        payment = PaymentServiceStub(served.channel)
        await payment.AuthorizePayment(authorize("kept", 2500), metadata=ALICE)
        await payment.CapturePayment(rpc.CapturePaymentRequest(order_id="kept"), metadata=ALICE)
        await payment.VoidPayment(rpc.VoidPaymentRequest(order_id="gone"), metadata=ALICE)
        deadline = time.monotonic() + WAIT_SECONDS
        while "gone" in payment_ids(config.db_path):
            assert time.monotonic() < deadline, "the tombstone was never pruned"
            await asyncio.sleep(0.05)
        error = await rejected(
            payment.GetPayment(rpc.GetPaymentRequest(order_id="gone"), metadata=ALICE)
        )
        assert error.reason == "PAYMENT_NOT_FOUND"
        assert (await state_of(payment, "kept")).state == pb.PAYMENT_STATE_CAPTURED
        assert await balance(payment) == (97_500, 0)


OLD_SCHEMA = """
CREATE TABLE accounts (
    user_id TEXT PRIMARY KEY, currency TEXT NOT NULL,
    available INTEGER NOT NULL CHECK (available >= 0),
    held INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    captured INTEGER NOT NULL DEFAULT 0 CHECK (captured >= 0)
);
CREATE TABLE payments (
    order_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO accounts VALUES ('alice', 'USD', 900, 100, 0);
INSERT INTO payments VALUES ('old', 'alice', 100, 'USD', 'AUTHORIZED', 1000.0, 1000.0);
"""


async def test_a_database_of_the_version_before_expiry_opens_and_its_holds_expire(
    tmp_path: pathlib.Path,
) -> None:
    """Its authorizations had no expire time: they get the default one, counted from when
    they were made, as if their caller had sent no duration."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    for _ in range(2):  # opening twice changes nothing more
        PaymentStore(path).close()
    store = PaymentStore(path)
    assert await store.expire_due(1000.0 + DAY - 1) == 0
    assert await store.expire_due(1000.0 + DAY) == 1
    assert (await store.payment("old")).state is PaymentState.EXPIRED
    account = await store.account("alice")
    assert (account.available, account.held) == (1000, 0)
    store.close()


async def test_test_faults_are_an_interceptor_installed_only_when_one_is_set(
    tmp_path: pathlib.Path,
) -> None:
    plain = await create_payment(PaymentConfig(db_path=tmp_path / "plain.db"))
    assert plain.interceptors == ()
    plain.store.close()
    base = PaymentConfig(db_path=tmp_path / "faulty.db")
    for config in (
        dataclasses.replace(base, lose_replies="VoidPayment:1"),
        dataclasses.replace(base, delay_seconds=0.1),
        dataclasses.replace(base, flaky_calls=1),
    ):
        faulty = await create_payment(config)
        assert [type(i) for i in faulty.interceptors] == [FaultInterceptor], config
        faulty.store.close()


async def test_a_lost_reply_took_effect_and_the_retry_gets_the_answer(
    tmp_path: pathlib.Path, seed_file: pathlib.Path
) -> None:
    config = PaymentConfig(
        db_path=tmp_path / "lossy.db", seed_file=seed_file, lose_replies="AuthorizePayment:1"
    )
    async with serving(await create_payment(config)) as served:
        payment = PaymentServiceStub(served.channel)
        lost = await rejected(payment.AuthorizePayment(authorize("o1", 2500), metadata=ALICE))
        assert (lost.code, lost.reason) == (grpc.StatusCode.UNAVAILABLE, "REPLY_LOST")
        assert await balance(payment) == (97_500, 2500)  # it took effect all the same
        again = await payment.AuthorizePayment(authorize("o1", 2500), metadata=ALICE)
        assert again.payment.state == pb.PAYMENT_STATE_AUTHORIZED
        assert await balance(payment) == (97_500, 2500)


async def test_a_flaky_instance_fails_every_second_mutating_call_before_doing_anything(
    tmp_path: pathlib.Path, seed_file: pathlib.Path
) -> None:
    config = PaymentConfig(db_path=tmp_path / "flaky.db", seed_file=seed_file, flaky_calls=2)
    async with serving(await create_payment(config)) as served:
        payment = PaymentServiceStub(served.channel)
        failed = await rejected(payment.AuthorizePayment(authorize("o1", 2500), metadata=ALICE))
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAVAILABLE, "FLAKY")
        assert await balance(payment) == (100_000, 0)  # nothing was done
        await payment.AuthorizePayment(authorize("o1", 2500), metadata=ALICE)
        # Reads are not mutating calls: never failed, and they count for nothing.
        await payment.GetPayment(rpc.GetPaymentRequest(order_id="o1"), metadata=ALICE)
        capture = rpc.CapturePaymentRequest(order_id="o1")
        failed = await rejected(payment.CapturePayment(capture, metadata=ALICE))
        assert failed.reason == "FLAKY"
        captured = await payment.CapturePayment(capture, metadata=ALICE)
        assert captured.payment.state == pb.PAYMENT_STATE_CAPTURED
        # Past the first 2N calls, none fails.
        void = rpc.VoidPaymentRequest(order_id="o2")
        assert (await payment.VoidPayment(void, metadata=ALICE)).payment.order_id == "o2"
