"""The load driver `make bench` uses on every path: CreateOrder over REST or gRPC, each
request with a new request id, closed-loop (saturation) or open-loop (a fixed offered rate).

Why our own driver: a CreateOrder with a repeated request id is an idempotent replay, not a
saga, so every request needs its own id. h2load and ghz send one fixed body (and ghz is not
packaged here); wrk can vary the body with Lua but speaks only HTTP/1.1 and cannot pace;
wrk2 is not packaged here. So this drives REST with aiohttp (HTTP/1.1 keep-alive, as wrk
and browsers do) and gRPC with grpc.aio, the same code for both systems and every path.

A response counts as a success only if it is an order in state CONFIRMED, so an error the
transport calls a success (a gRPC error over HTTP 200) is still a failure. At a fixed rate
each latency is measured from the request's scheduled send time, not from when it was
sent, so a stall in the system counts against it (no coordinated omission).

    python -m bench.load --transport rest --target http://127.0.0.1:8080 --token T \\
        --sku SKU-TEA --prefix run1 --seconds 10 --connections 16   # or --rate 150

prints one JSON object: requests, ok, failed, failures by kind, seconds, p50/p99/max ms,
and the driver's own CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

import aiohttp
import grpc
import uvloop

from services.common.identity import USER_HEADER
from shop.order.v1 import order_pb2, order_service_pb2

CREATE_ORDER = "/shop.order.v1.OrderService/CreateOrder"
REQUEST_TIMEOUT_SECONDS = 10.0
CONFIRMED = order_pb2.ORDER_STATE_CONFIRMED

# One call: returns None on success, else a short failure kind ("http 401", "UNAVAILABLE").
Send = Callable[[str], Awaitable[str | None]]


@dataclass
class Report:
    requests: int = 0
    ok: int = 0
    seconds: float = 0.0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    driver_cpu_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # with --latencies: every one

    @property
    def failed(self) -> int:
        return self.requests - self.ok


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`; NaN if there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


class Recorder:
    """Latencies of the orders that succeeded, and the failures by kind."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures: Counter[str] = Counter()

    async def call(self, send: Send, request_id: str, started: float) -> None:
        try:
            failure = await send(request_id)
        except Exception as error:  # any transport error is a failed request
            failure = type(error).__name__
        if failure is None:  # a fast refusal is no latency of an order
            self.latencies.append(time.perf_counter() - started)
        else:
            self.failures[failure] += 1

    def report(self, seconds: float) -> Report:
        ordered = sorted(self.latencies)

        def ms(q: float) -> float:
            return percentile(ordered, q) * 1000

        return Report(
            latencies_ms=[round(x * 1000, 3) for x in ordered],
            requests=len(ordered) + sum(self.failures.values()),
            ok=len(ordered),
            seconds=seconds,
            p50_ms=ms(0.50),
            p99_ms=ms(0.99),
            max_ms=ordered[-1] * 1000 if ordered else math.nan,
            failures=dict(self.failures),
        )


async def saturate(send: Send, prefix: str, seconds: float, connections: int) -> Report:
    """Closed loop: `connections` callers, each sending its next order as soon as the last ends."""
    recorder = Recorder()
    start = time.perf_counter()
    end = start + seconds

    async def caller(number: int) -> None:
        count = 0
        while time.perf_counter() < end:
            count += 1
            await recorder.call(send, f"{prefix}-{number}-{count}", time.perf_counter())

    await asyncio.gather(*(caller(n) for n in range(connections)))
    return recorder.report(time.perf_counter() - start)


async def pace(send: Send, prefix: str, seconds: float, rate: float) -> Report:
    """Open loop: one order every 1/rate seconds whatever the answers do; latency from the
    scheduled time."""
    recorder = Recorder()
    start = time.perf_counter() + 0.01
    calls: set[asyncio.Task[None]] = set()
    for number in range(int(rate * seconds)):
        due = start + number / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(recorder.call(send, f"{prefix}-{number}", due))
        calls.add(task)
        task.add_done_callback(calls.discard)
    if calls:
        await asyncio.wait(calls)
    return recorder.report(time.perf_counter() - start)


def rest_sender(session: aiohttp.ClientSession, target: str, token: str, sku: str) -> Send:
    url = f"{target}/v1/orders"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    items = f'"line_items":[{{"sku":"{sku}","quantity":1}}]'

    async def send(request_id: str) -> str | None:
        body = f'{{"request_id":"{request_id}",{items}}}'
        async with session.post(url, data=body, headers=headers) as response:
            text = await response.read()
            if response.status != 200:
                return f"http {response.status}"
        # shopmesh answers ORDER_STATE_CONFIRMED (proto JSON), the baseline CONFIRMED.
        state = str(json.loads(text)["order"]["state"])
        return None if state.endswith("CONFIRMED") else f"state {state}"

    return send


def grpc_sender(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], sku: str) -> Send:
    create = channel.unary_unary(
        CREATE_ORDER,
        request_serializer=order_service_pb2.CreateOrderRequest.SerializeToString,
        response_deserializer=order_service_pb2.CreateOrderResponse.FromString,
    )
    item = order_pb2.LineItem(sku=sku, quantity=1)

    async def send(request_id: str) -> str | None:
        request = order_service_pb2.CreateOrderRequest(request_id=request_id, line_items=[item])
        try:
            response = await create(request, metadata=metadata, timeout=REQUEST_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return None if response.order.state == CONFIRMED else f"state {response.order.state}"

    return send


async def drive(args: argparse.Namespace) -> Report:
    def run(send: Send) -> Awaitable[Report]:
        if args.rate:
            return pace(send, args.prefix, args.seconds, args.rate)
        return saturate(send, args.prefix, args.seconds, args.connections)

    if args.transport == "rest":
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        connector = aiohttp.TCPConnector(limit=args.connections)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            return await run(rest_sender(session, args.target, args.token, args.sku))
    # Through Envoy the token is the identity; straight to the order service the identity
    # header Envoy would have set from it.
    metadata = (
        (("authorization", f"Bearer {args.token}"),) if args.token else ((USER_HEADER, args.user),)
    )
    async with grpc.aio.insecure_channel(args.target) as channel:
        return await run(grpc_sender(channel, metadata, args.sku))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--transport", choices=("rest", "grpc"), required=True)
    parser.add_argument("--target", required=True, help="REST: http://host:port; gRPC: host:port")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", help="a JWT, sent as Authorization: Bearer")
    who.add_argument("--user", help="gRPC only: sent as x-shop-user (no gateway in between)")
    parser.add_argument("--sku", required=True)
    parser.add_argument("--prefix", required=True, help="request ids are <prefix>-<n>...")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="closed loop: concurrent callers; open loop: at most this many REST connections",
    )
    parser.add_argument("--rate", type=float, help="open loop at this many orders per second")
    parser.add_argument(
        "--latencies", action="store_true", help="print every latency too (to pool runs)"
    )
    args = parser.parse_args(argv)
    if args.user and args.transport == "rest":
        parser.error("--user is for gRPC straight to the order service; REST needs --token")
    if args.seconds <= 0 or (args.rate is not None and args.rate <= 0) or args.connections < 1:
        parser.error("--seconds, --rate and --connections must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    report = uvloop.run(drive(args))
    if not args.latencies:
        report.latencies_ms = []
    times = os.times()
    report.driver_cpu_s = times.user + times.system
    print(json.dumps({**asdict(report), "failed": report.failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
