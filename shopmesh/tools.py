"""Where the repository, its demo data and the real components (once `make setup` has run)
are, and free ports."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import sys
from collections.abc import Collection

REPO = pathlib.Path(__file__).resolve().parent.parent
WORKDIR = REPO / "var"
"""Where `make run` keeps its logs, databases and dev keys; absolute, so the commands
find it from any directory."""
DEMO_DATA = REPO / "services" / "demo_data.json"
"""The products and accounts `shopmesh run` seeds a new system with."""
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


def free_ports(count: int, *, udp: bool = False, avoid: Collection[int] = ()) -> list[int]:
    """`count` different ports nothing listens on now (the kernel's picks), for tests that
    must not collide. All probes stay bound until every port is picked:
    the kernel may hand out a port again as soon as its probe closes. With `udp`, each is
    free for UDP as well (Consul's serf and DNS ports take both); none is in `avoid`."""
    probes: list[socket.socket] = []
    picked: list[int] = []
    try:
        while len(picked) < count:
            if len(probes) > count + 100:
                raise OSError(f"found only {len(picked)} of {count} free ports")
            probe = socket.socket()
            probes.append(probe)
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            if port in avoid or (udp and not _udp_free(port, probes)):
                continue
            picked.append(port)
        return picked
    finally:
        for probe in probes:
            probe.close()


def _udp_free(port: int, probes: list[socket.socket]) -> bool:
    """Whether UDP `port` can be bound; if so, it stays bound (in `probes`) for now."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probes.append(probe)
    try:
        probe.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def write_private(path: pathlib.Path, data: bytes | str) -> pathlib.Path:
    """Writes `data` owner-only from its first byte (a key, a token, a config that names
    who may do what) to a staged file, then renames it into place, so a reader never
    sees half of it."""
    staged = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    staged.replace(path)
    return path
