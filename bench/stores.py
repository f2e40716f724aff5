"""`python -m bench.stores`: what a store read and a store write cost, in process.

Times the order store (the busiest: every CreateOrder writes an order, its items, its saga
and its lease, then reads the order back) on a file in a temporary directory:

- read: `order(id)`, the read GetOrder makes (two SELECTs in one snapshot, on the loop);
- lone write: `create`, awaited one at a time (each its own batch: the writer thread's
  hand-off included), wall and CPU time per write;
- batched writes: BATCH `create`s gathered, so they share one COMMIT, CPU time per write.

CPU is the process's (both threads); each figure is the median over ROUNDS rounds of at
least ROUND_SECONDS. synchronous=NORMAL by default, so that fsyncs (the disk, not the
code) do not drown what the store's code costs; `--synchronous FULL` times the services'
setting. It also runs on the code before the stores were async (it awaits what needs it),
for an A/B of that change.

    python -m bench.stores [--rounds 5] [--synchronous NORMAL]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import pathlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.order.domain import LineItem
from services.order.store import OrderStore

ROUNDS = 5
ROUND_SECONDS = 0.5
BATCH = 50
ITEMS = (LineItem("SKU-TEA-001", 2), LineItem("SKU-MUG-002", 1))


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _order_ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"bench-{next(counter)}"


async def _per_call(
    call: Callable[[], Awaitable[object]], rounds: int, calls_each: int = 1
) -> tuple[float, float]:
    """Median wall and CPU microseconds per call over `rounds` rounds."""
    walls, cpus = [], []
    for _ in range(rounds):
        calls, wall, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - wall < ROUND_SECONDS:
            await call()
            calls += calls_each
        walls.append((time.perf_counter() - wall) / calls * 1e6)
        cpus.append((time.process_time() - cpu) / calls * 1e6)
    return statistics.median(walls), statistics.median(cpus)


async def measure(path: pathlib.Path, synchronous: str, rounds: int) -> dict[str, float]:
    store = OrderStore(path, synchronous)
    next_id = _order_ids()
    try:

        async def create() -> object:
            order_id = next_id()
            return await store.create(order_id, "alice", order_id, ITEMS, time.time())

        await create()
        known = next_id()
        await store.create(known, "alice", known, ITEMS, time.time())

        async def read() -> object:
            return await _result(store.order(known))

        async def batch() -> object:
            return await asyncio.gather(*(create() for _ in range(BATCH)))

        read_wall, read_cpu = await _per_call(read, rounds)
        lone_wall, lone_cpu = await _per_call(create, rounds)
        _, batch_cpu = await _per_call(batch, rounds, BATCH)
    finally:
        store.close()
    return {
        "read CPU µs": read_cpu,
        "read wall µs": read_wall,
        "lone write wall µs": lone_wall,
        "lone write CPU µs": lone_cpu,
        f"batched write CPU µs ({BATCH} a batch)": batch_cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--synchronous", default="NORMAL", choices=("NORMAL", "FULL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stores-") as tmp:
        figures = asyncio.run(
            measure(pathlib.Path(tmp) / "order.db", args.synchronous, args.rounds)
        )
    print(f"| order store, synchronous={args.synchronous} | median of {args.rounds} |")
    print("|---|---:|")
    for name, value in figures.items():
        print(f"| {name} | {value:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
