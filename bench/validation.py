"""`make bench-validation`: the CPU that checking one CreateOrder request costs, in process.

It times what CreateOrder checks before it writes anything (services.order.servicer's
check_create_order: the contract's field rules, then each SKU once) on requests of 1 and
50 valid items (the most an order may hold), and on requests it refuses: 100 and 100 000
valid items, and 20 000 invalid ones (a 0.2 MB request; gRPC admits 4 MB).
If the protovalidate library is installed (it is not a dependency: see
services.common.rules for why), it times protovalidate.collect_violations on the same
requests, the alternative to our checker.

Each figure is the median, over ROUNDS rounds, of the process CPU time per call of a
round that lasts at least ROUND_SECONDS. A checker that takes more than SLOW_SECONDS for
one request is not timed on the larger ones.

    python -m bench.validation [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.metadata
import statistics
import time
from collections.abc import Callable
from typing import Any

from services.common.errors import ServiceError
from services.order.servicer import check_create_order
from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as rpc

ROUNDS = 5
ROUND_SECONDS = 0.2
SLOW_SECONDS = 0.1


def order_request(items: int, valid: bool = True) -> rpc.CreateOrderRequest:
    """A request for `items` distinct products, each valid (only the count may not be), or
    each with a bad SKU and quantity."""
    return rpc.CreateOrderRequest(
        request_id="bench-validation-1",
        line_items=[
            order_pb2.LineItem(sku=f"SKU-{n:06d}", quantity=1)
            if valid
            else order_pb2.LineItem(sku="bad sku", quantity=0)
            for n in range(items)
        ],
    )


CASES = {
    "1 item": order_request(1),
    "50 items": order_request(50),
    "100 items": order_request(100),
    "100 000 items": order_request(100_000),
    "20 000 bad items": order_request(20_000, valid=False),
}


def ours(request: rpc.CreateOrderRequest) -> None:
    with contextlib.suppress(ServiceError):
        check_create_order(request)


def cpu_microseconds(call: Callable[[], Any], rounds: int) -> float:
    """The median over rounds of the CPU time per call, in microseconds."""
    per_call = []
    for _ in range(rounds):
        calls, started = 0, time.process_time()
        while (spent := time.process_time() - started) < ROUND_SECONDS:
            call()
            calls += 1
        per_call.append(spent / calls * 1e6)
    return statistics.median(per_call)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    checkers: dict[str, Callable[[rpc.CreateOrderRequest], Any]] = {"shopmesh rules": ours}
    try:
        protovalidate = importlib.import_module("protovalidate")
    except ImportError:
        print("(protovalidate is not installed: only shopmesh's checker is timed)")
    else:
        version = importlib.metadata.version("protovalidate")
        checkers[f"protovalidate {version}"] = protovalidate.collect_violations
    print("| checker | " + " | ".join(CASES) + " |")
    print("|---|" + "---:|" * len(CASES))
    for name, check in checkers.items():
        row: list[str] = []
        slow = False
        for request in CASES.values():
            if slow:
                row.append("not timed")
                continue
            spent = cpu_microseconds(functools.partial(check, request), args.rounds)
            slow = spent > SLOW_SECONDS * 1e6
            row.append(f"{spent / 1e3:,.1f} ms" if spent >= 1e3 else f"{spent:.1f} µs")
        print(f"| {name} | " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
