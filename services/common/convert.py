"""Domain values to the protobuf messages every service returns."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from shop.money.v1 import money_pb2


def money(amount_minor: int, currency: str) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=amount_minor)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp from time.time() seconds."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp
