"""The README's grpcurl examples, run as written against a stack seeded with the demo data.

Only the addresses change (the tests use free ports); a comment saying "grpcurl exits N"
gives the exit code the next command must have, and every other command must succeed.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest

from services.stack import DEMO_DATA, REPO, Stack, start_stack

START = "<!-- readme-examples"
END = "<!-- /readme-examples -->"


def examples() -> list[tuple[str, int]]:
    """(command, expected exit code) for each command of the README's example block."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(START) : text.index(END)]
    found, expected = [], 0
    for line in block.splitlines():
        if line.startswith("#"):
            match = re.search(r"grpcurl exits (\d+)", line)
            expected = int(match.group(1)) if match else 0
        elif line.startswith(".venv/bin/grpcurl"):
            found.append((line, expected))
            expected = 0
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = start_stack(tmp_path_factory.mktemp("readme") / "stack", DEMO_DATA)
    yield started
    started.stop()


def test_the_readme_has_examples() -> None:
    assert len(examples()) >= 8


def test_every_example_works_as_written(stack: Stack) -> None:
    ports = {
        "localhost:50051": stack.inventory.target,
        "localhost:50052": stack.payment.target,
        "localhost:50053": stack.order.target,
    }
    outputs = []
    for written_command, expected in examples():
        command = written_command
        for written, actual in ports.items():
            command = command.replace(written, actual)
        ran = subprocess.run(
            ["bash", "-c", command],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert ran.returncode == expected, f"{command}\n{ran.stdout}\n{ran.stderr}"
        outputs.append(ran)
    # What the prose around the examples promises.
    created = next(json.loads(o.stdout) for o in outputs if '"orderId"' in o.stdout)
    assert created["order"]["state"] == "ORDER_STATE_CONFIRMED"
    assert any('"reason":"INSUFFICIENT_FUNDS"' in o.stderr for o in outputs)
    assert any('"field":"line_items[0].quantity"' in o.stderr for o in outputs)
