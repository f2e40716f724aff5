"""`make bench` in miniature: both systems start, answer real orders under wrk with no
failed request, and the results are written. Speed targets belong to `make bench`."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from shopmesh.tools import REPO


def test_the_benchmark_runs_and_both_systems_answer(tmp_path: pathlib.Path) -> None:
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--rounds",
            "1",
            "--seconds",
            "2",
            "--connections",
            "4",
            "--out",
            str(tmp_path / "results"),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "latest.json").read_text())
    for name in ("shopmesh", "baseline"):
        (measured,) = results[name]["rounds"]
        assert measured["requests"] > 0 and measured["non_2xx"] == 0, measured
    assert "| shopmesh REST+JWT via Envoy |" in (tmp_path / "results" / "latest.md").read_text()
