"""The README's examples, run as written against the whole system (Consul, control plane,
services, Envoy) seeded with the demo data.

Only Envoy's address changes (the tests use free ports). In the "Calling it" block,
`export` lines run before every command; a comment saying "grpcurl exits N" gives the exit
code the next command must have, and every other command must succeed. Each code block
after a `<!-- run:LANG -->` marker ("Using the API") runs whole: sh with bash, ts with
node in clients/typescript, python with the venv's interpreter.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator

import pytest

from shopmesh.system import Ports, Settings, System
from shopmesh.system import start as start_system
from shopmesh.tools import DEMO_DATA, REPO
from tests.helpers import run_command
from tests.system_helpers import build_typescript_client

START = "<!-- readme-examples"
END = "<!-- /readme-examples -->"


def examples() -> tuple[list[str], list[tuple[str, int]]]:
    """(export lines, [(command, expected exit code)]) of the README's example block."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(START) : text.index(END)]
    exports, commands, expected = [], [], 0
    for line in block.splitlines():
        if line.startswith("#"):
            match = re.search(r"grpcurl exits (\d+)", line)
            expected = int(match.group(1)) if match else 0
        elif line.startswith("export "):
            exports.append(line)
        elif line.startswith((".venv/bin/", "curl ")):
            commands.append((line, expected))
            expected = 0
    return exports, commands


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    # The README's `shopmesh token` signs with var/jwt, as after `make setup`.
    settings = Settings(
        workdir=tmp_path_factory.mktemp("readme"),
        ports=Ports.free(),
        seed_file=DEMO_DATA,
        keys_dir=REPO / "var" / "jwt",
    )
    started = start_system(settings)
    yield started
    started.stop()


def marked_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block right after a `<!-- run:LANG -->` marker."""
    text = (REPO / "README.md").read_text()
    return re.findall(r"<!-- run:(\w+) -->\n```\w*\n(.*?)```", text, re.DOTALL)


def test_the_readme_has_examples() -> None:
    assert [lang for lang, _ in marked_blocks()] == ["sh", "sh", "ts", "python"]
    exports, commands = examples()
    assert exports
    assert len(commands) >= 8


def test_every_example_works_as_written(system: System) -> None:
    exports, commands = examples()
    outputs = []
    for written, expected in commands:
        command = written.replace("localhost:8080", system.public_target)
        ran = run_command(
            ["bash", "-c", "\n".join([*exports, command])], expect=expected, timeout=30
        )
        outputs.append(ran.stdout + ran.stderr)
    # What the prose around the examples promises.
    placed = json.loads(next(o for o in outputs if '"requestId":"readme-1"' in o))
    assert placed["order"]["state"] == "ORDER_STATE_CONFIRMED"
    assert any('"reason":"INSUFFICIENT_FUNDS"' in o for o in outputs)
    assert "401\n" in outputs
    assert any('"field":"line_items[0].quantity"' in o for o in outputs)
    assert any('"availableQuantity": 6' in o for o in outputs)  # restocked 1 + 5


def test_using_the_api_four_ways(system: System) -> None:
    env = {**os.environ, "TOKEN": system.token("alice")}
    client = build_typescript_client()
    for language, written in marked_blocks():
        code = written.replace("localhost:8080", system.public_target)
        if language == "sh":
            command, cwd = ["bash", "-c", code], REPO
        elif language == "ts":
            snippet = client / "dist" / "readme-snippet.mjs"
            snippet.write_text(code.replace("./dist/src/index.js", "./src/index.js"))
            command, cwd = ["node", str(snippet)], client
        else:
            command, cwd = [sys.executable, "-c", code], REPO
        ran = run_command(command, cwd=cwd, env=env)
        if language == "sh":
            assert "ORDER_STATE_CONFIRMED" in ran.stdout, ran.stdout
        elif language == "ts":
            placed, reason = ran.stdout.splitlines()
            assert placed.endswith(" 2 900n"), ran.stdout  # OrderState.CONFIRMED, a bigint
            assert reason == "ORDER_NOT_FOUND", ran.stdout
        else:
            assert ran.stdout.strip().endswith(" CONFIRMED 900"), ran.stdout
