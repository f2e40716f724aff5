"""The TypeScript client (clients/typescript) against the live system with node: real gRPC
through Envoy with a token, errors with their reasons, and REST with fetch."""

from __future__ import annotations

import os
import re

from shopmesh.system import System
from tests.helpers import run_command
from tests.system_helpers import build_typescript_client


def test_the_typescript_client_works_against_the_system(system: System) -> None:
    client = build_typescript_client()
    env = {
        **os.environ,
        "SHOPMESH_URL": f"http://{system.public_target}",
        "SHOPMESH_TOKEN": system.token("alice"),
    }
    ran = run_command(["node", "--test", "dist/test/"], cwd=client, env=env, timeout=120)
    passed = re.search(r"^# pass (\d+)$", ran.stdout, re.MULTILINE)
    assert passed is not None and int(passed.group(1)) >= 4, ran.stdout[-2000:]
    assert re.search(r"^# fail 0$", ran.stdout, re.MULTILINE)
