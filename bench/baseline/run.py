"""Starts the three baseline services with uvicorn (uvloop + httptools, one worker each,
as shopmesh runs one process per service) on free ports, and waits until they answer."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from shopmesh.processes import signal_process, stop_process
from shopmesh.system import http_get
from shopmesh.tools import REPO, free_ports

READY_TIMEOUT_SECONDS = 30.0


@dataclass
class Baseline:
    processes: dict[str, subprocess.Popen[bytes]]
    ports: dict[str, int]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def stop(self) -> None:
        for process in self.processes.values():  # all at once, then wait for each
            signal_process(process, signal.SIGTERM)
        for process in self.processes.values():
            stop_process(process)


def _ready(url: str) -> bool:
    status, _ = http_get(f"{url}/healthz", timeout=1)
    return status == 200


def start(workdir: pathlib.Path, seed: pathlib.Path, jwks: pathlib.Path) -> Baseline:
    workdir.mkdir(parents=True, exist_ok=True)
    names = ("inventory", "payment", "order")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    base = {**os.environ, "BASELINE_SEED": str(seed), "BASELINE_JWKS": str(jwks)}
    extra = {
        "order": {
            "BASELINE_INVENTORY_URL": f"http://127.0.0.1:{ports['inventory']}",
            "BASELINE_PAYMENT_URL": f"http://127.0.0.1:{ports['payment']}",
        }
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    baseline = Baseline(processes, ports)
    try:
        for name, port in ports.items():
            env = {
                **base,
                "BASELINE_DB": str(workdir / f"baseline-{name}.db"),
                **extra.get(name, {}),
            }
            with (workdir / f"baseline-{name}.log").open("ab") as log:
                processes[name] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        f"bench.baseline.{name}:app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--loop",
                        "uvloop",
                        "--http",
                        "httptools",
                        "--no-access-log",
                        "--log-level",
                        "warning",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for name in ports:
            while not _ready(baseline.url(name)):
                if processes[name].poll() is not None or time.monotonic() > deadline:
                    tail = (workdir / f"baseline-{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"baseline {name} did not start; its log ends:\n{tail}")
                time.sleep(0.05)
    except BaseException:
        baseline.stop()
        raise
    return baseline
