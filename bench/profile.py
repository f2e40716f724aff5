"""`make profile`: where shopmesh's services spend their time under the order load.

Starts shopmesh, drives CreateOrder over REST through Envoy (bench/load.py) and samples
every service process with py-spy meanwhile. py-spy leaves out threads waiting in the
event loop's poll, but counts a thread blocked in a syscall such as fsync as busy, so
COMMIT shows up with the time the disk takes. Prints, per service, the functions with the
most samples including what they call, and with the most samples of their own; the
collapsed stacks (flamegraph input) stay in bench/results/profile/<service>.txt. With
`--postgres` (`make profile POSTGRES=1`), every store on a PostgreSQL cluster of its own.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import shutil
import subprocess
import sys
import time

from bench.measure import SEED_ACCOUNTS, SEED_PRODUCTS, SHOP_REST, LoadPath, drive, shop_settings
from shopmesh import tokens
from shopmesh.seed import write_seed
from shopmesh.system import start
from shopmesh.tools import REPO

PY_SPY = pathlib.Path(sys.executable).parent / "py-spy"


def top(
    stacks: pathlib.Path, count: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """(inclusive, self, total samples) from py-spy's collapsed (raw) output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        n = int(samples)
        total += n
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    return inclusive.most_common(count), own.most_common(count), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--postgres", action="store_true", help="the stores on PostgreSQL")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "bench" / "results" / "profile")
    parser.add_argument("--workdir", type=pathlib.Path, default=REPO / "var" / "profile")
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    seed = write_seed(args.workdir / "seed.json", SEED_PRODUCTS, SEED_ACCOUNTS)
    print("starting shopmesh...", flush=True)
    # As `make bench` runs it: one user sends every order, its limits lifted.
    shop = start(shop_settings(args.workdir / "shopmesh", seed, postgres=args.postgres))
    try:
        token = tokens.issue("bench", directory=shop.keys.private_pem.parent)
        rest = LoadPath(
            SHOP_REST, "shopmesh", "rest", f"http://{shop.public_target}", ("--token", token)
        )
        drive(rest, f"warm-{time.time_ns()}", 3, args.connections)
        spies = {
            s.label: subprocess.Popen(
                [
                    str(PY_SPY),
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "250",
                    "--nonblocking",
                    "-d",
                    str(args.seconds),
                    "-p",
                    str(s.pid),
                    "-o",
                    str(args.out / f"{s.label}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for s in shop.instances()
        }
        print(f"driving orders for {args.seconds} s with py-spy attached...", flush=True)
        driven = drive(rest, f"prof-{time.time_ns()}", args.seconds, args.connections)
        print(f"{driven['ok']} orders confirmed, {driven['failed']} failed", flush=True)
        for spy in spies.values():
            spy.wait(timeout=60)
    finally:
        shop.stop()
    for label in spies:
        inclusive, own, total = top(args.out / f"{label}.txt", args.top)
        print(f"\n== {label}: {total} samples; inclusive / self, % of samples")
        for frame, n in inclusive:
            print(f"  {100 * n / total:5.1f}%  {frame}")
        print("  -- self")
        for frame, n in own:
            print(f"  {100 * n / total:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
