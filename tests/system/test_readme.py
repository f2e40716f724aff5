"""The examples of README.md, docs/*.md and gateway/README.md, run as written against the
whole system (Consul, control plane, services, Envoy) seeded with the demo data.

An example is a fenced block right after a `<!-- run:LANG -->` line, and what it prints
is the fenced block right after the next `<!-- output -->` line: every example shows its
output. sh runs with bash from the repository root, ts as the docs say to run it (saved
in clients/typescript, compiled with tsc, run with node), python with the venv's
interpreter. The output is compared as doctest compares (`...` stands for any text, such
as an id or a time; runs of whitespace are equal). Only addresses change: Envoy's public
listener (localhost:8080) and the system's workdir (var/) are the test system's. The
documents run in the order of DOCUMENTS, each from top to bottom, on one system, so an
example sees what the ones before it did.
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shopmesh.system import Ports, Settings, System
from shopmesh.system import start as start_system
from shopmesh.tools import DEMO_DATA, REPO
from tests.system_helpers import build_typescript_client

DOCUMENTS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "gateway" / "README.md",
]
EXAMPLE = re.compile(
    r"<!-- run:(?P<language>\w+) -->\n```\w*\n(?P<code>.*?)```\n"
    r"(?:(?!<!-- run:).)*?<!-- output -->\n```\w*\n(?P<output>.*?)```",
    re.DOTALL,
)
# The TypeScript example's file, and the command the docs give to run it.
TS_FILE = "example.ts"
TS_COMMAND = re.compile(r"npx tsc .*? example\.ts && node dist/example\.js")
OUTPUT = doctest.OutputChecker()
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@dataclass(frozen=True)
class Example:
    document: str
    language: str
    code: str
    output: str

    def __str__(self) -> str:
        return f"{self.document}: {self.language} example\n{self.code}"


def examples() -> list[Example]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        matched = list(EXAMPLE.finditer(text))
        # A run marker whose block has no output block would be skipped silently.
        assert len(matched) == text.count("<!-- run:"), f"{document}: an example without output"
        name = str(document.relative_to(REPO))
        found += [Example(name, m["language"], m["code"], m["output"]) for m in matched]
    return found


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    # The docs' `shopmesh token` signs with var/jwt, as after `make setup`.
    settings = Settings(
        workdir=tmp_path_factory.mktemp("readme"),
        ports=Ports.free(),
        seed_file=DEMO_DATA,
        keys_dir=REPO / "var" / "jwt",
    )
    started = start_system(settings)
    yield started
    started.stop()


def test_every_document_has_its_examples() -> None:
    by_document: dict[str, list[str]] = {}
    for example in examples():
        by_document.setdefault(example.document, []).append(example.language)
    assert by_document["README.md"] == ["sh"]
    assert by_document["docs/api.md"].count("sh") >= 4
    assert {"ts", "python"} <= set(by_document["docs/api.md"])
    api = (REPO / "docs" / "api.md").read_text()
    assert TS_COMMAND.search(api), "docs/api.md gives no command for the TypeScript example"
    assert f"save it as `{TS_FILE}`" in api


def test_the_output_check_can_fail() -> None:
    assert OUTPUT.check_output('{"orderId": "..."}\n', '{"orderId": "d5b7"}\n', OPTIONS)
    assert not OUTPUT.check_output('{"state": "CONFIRMED"}\n', '{"state": "CANCELLED"}\n', OPTIONS)


def _run(example: Example, system: System) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKEN": system.token("alice")}
    code = example.code.replace("localhost:8080", system.public_target)
    code = re.sub(r"\bvar/(?=\w+\.ready\b)", f"{system.settings.workdir}/", code)
    if example.language == "sh":
        command, cwd = ["bash", "-c", code], REPO
    elif example.language == "ts":
        cwd = build_typescript_client()
        (cwd / TS_FILE).write_text(code)
        given = TS_COMMAND.search((REPO / "docs" / "api.md").read_text())
        assert given is not None, "docs/api.md gives no command for the TypeScript example"
        command = ["bash", "-c", given[0]]
    else:
        command, cwd = [sys.executable, "-c", code], REPO
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # interleaved, as a terminal shows them
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        if example.language == "ts":
            (cwd / TS_FILE).unlink(missing_ok=True)


def test_every_example_prints_what_its_document_shows(system: System) -> None:
    for example in examples():
        printed = _run(example, system).stdout
        assert OUTPUT.check_output(example.output, printed, OPTIONS), (
            f"{example}\nprints:\n{printed}\nthe document shows:\n{example.output}"
        )
