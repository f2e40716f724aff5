"""Where the real components live once `make setup` has run, and free ports."""

from __future__ import annotations

import pathlib
import shutil
import socket
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


class MissingTool(RuntimeError):
    """A component is not installed; the message says how to install it."""


def tool(name: str) -> str:
    """The path of consul, envoy, grpcurl or buf as installed by `make setup`."""
    for candidate in (BIN / name, REPO / ".tools" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise MissingTool(f"{name} is not installed: run `make setup`")


def free_ports(count: int) -> list[int]:
    """`count` different ports nothing listens on now (the kernel's picks), for tests that
    must not collide. All probes stay bound until every port is picked:
    the kernel may hand out a port again as soon as its probe closes."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()
