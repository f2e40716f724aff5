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


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick), for tests that must not collide."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
