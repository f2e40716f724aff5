"""Domain values to the protobuf messages every service returns."""

from __future__ import annotations

import math

from google.protobuf import timestamp_pb2

from shop.money.v1 import money_pb2


def money(amount_minor: int, currency: str) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=amount_minor)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp from time.time() seconds, which `seconds_of` reads back as the very
    same float: the whole seconds and the nanoseconds of the fraction (the subtraction is
    exact), as a double's resolution is coarser than a nanosecond for any time after April
    1970. (`round(seconds * 1e9)` was off by up to a few hundred nanoseconds, so an
    order's create_time and its OrderPlaced's occur_time, one float, showed apart.)"""
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos == 1_000_000_000:
        whole, nanos = whole + 1, 0
    return timestamp_pb2.Timestamp(seconds=whole, nanos=nanos)


def seconds_of(stamp: timestamp_pb2.Timestamp) -> float:
    """The time.time() seconds of a Timestamp."""
    return stamp.seconds + stamp.nanos / 1e9
