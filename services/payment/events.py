"""Payment's facts (shop/payment/v1/payment_events.proto) made from its domain values:
what the store appends to its outbox as money moves."""

from __future__ import annotations

from services.common.convert import money, timestamp
from services.payment.domain import Payment
from shop.payment.v1 import payment_events_pb2 as ev


def authorized(p: Payment) -> ev.PaymentAuthorized:
    return ev.PaymentAuthorized(
        order_id=p.order_id,
        user_id=p.user_id,
        amount=money(p.amount_minor, p.currency),
        expire_time=timestamp(p.expire_at or 0.0),
    )


def captured(p: Payment) -> ev.PaymentCaptured:
    return ev.PaymentCaptured(
        order_id=p.order_id, user_id=p.user_id, amount=money(p.amount_minor, p.currency)
    )


def voided(
    order_id: str, user_id: str, amount_minor: int, currency: str, *, expired: bool
) -> ev.PaymentVoided:
    return ev.PaymentVoided(
        order_id=order_id,
        user_id=user_id,
        amount=money(amount_minor, currency),
        expired=expired,
    )
