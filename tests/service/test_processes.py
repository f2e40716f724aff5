"""The supervisor's restart policy on real child processes that misbehave at once, with a
short policy so each test takes about a second (tests/system/test_run.py has the real parts)."""

from __future__ import annotations

import logging
import pathlib
import sys
import time

import pytest

from shopmesh.processes import CrashLoop, Process, RestartPolicy, Supervisor

QUICK = RestartPolicy(
    first_delay_seconds=0.05, max_delay_seconds=0.2, crash_limit=4, ready_timeout_seconds=0.5
)


def supervise_until_it_gives_up(supervisor: Supervisor, timeout: float = 20) -> CrashLoop:
    deadline = time.monotonic() + timeout
    with pytest.raises(CrashLoop) as raised:
        supervisor.run(lambda: time.monotonic() > deadline, interval=0.01)
    return raised.value


def test_a_part_that_exits_at_once_is_restarted_with_backoff_then_given_up_on(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    command = [sys.executable, "-c", "raise SystemExit(3)"]
    part = Process("flaky", tmp_path / "flaky.log", command, ready=lambda: False).start()
    caplog.set_level(logging.INFO, "shopmesh.processes")
    loop = supervise_until_it_gives_up(Supervisor([part], QUICK))
    assert loop.part is part
    assert str(loop).startswith("flaky crashed 4 times in 60 s (last: it exited with code 3)")
    assert [r.getMessage() for r in caplog.records] == [
        "flaky exited with code 3; restarting in 0.05 s (restart 1)",
        "flaky exited with code 3; restarting in 0.1 s (restart 2)",
        "flaky exited with code 3; restarting in 0.2 s (restart 3)",
    ]


def test_a_restarted_part_that_never_gets_ready_is_killed_and_counts_as_a_crash(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    ready = [True]  # ready at the first start, never after a restart
    part = Process(
        "stuck",
        tmp_path / "stuck.log",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        ready=lambda: ready[0],
    ).start()
    caplog.set_level(logging.INFO, "shopmesh.processes")
    supervisor = Supervisor([part], QUICK)
    try:
        part.kill()
        ready[0] = False
        loop = supervise_until_it_gives_up(supervisor)
    finally:
        part.stop()
    assert "(last: it was not ready 0.5 s after its restart)" in str(loop)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "stuck exited with signal 9; restarting in 0.05 s (restart 1)"
    assert messages[1].startswith("stuck was not ready 0.5 s after its restart;"), messages
    assert not part.running()  # the supervisor killed the last one it started


CHILD_TEST = """
import pathlib, subprocess, time, pytest
from tests.helpers import stop_on_sigterm

stop_on_sigterm()

@pytest.fixture
def child():
    process = subprocess.Popen(["sleep", "600"])
    pathlib.Path(PID_FILE).write_text(str(process.pid))
    yield
    process.terminate()
    process.wait()

def test_long(child):
    time.sleep(600)  # a long test, stopped from outside
"""


def test_a_run_stopped_by_sigterm_stops_what_its_fixtures_started(tmp_path: pathlib.Path) -> None:
    """timeout and CI send pytest SIGTERM: the fixture's child must not outlive the run."""
    pid_file = tmp_path / "child.pid"
    test_file = tmp_path / "test_child.py"
    test_file.write_text(f"PID_FILE = {str(pid_file)!r}\n{CHILD_TEST}")
    run = Process(
        "pytest",
        tmp_path / "pytest.log",
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        ready=pid_file.exists,
    ).start()
    run.wait_ready()
    child = int(pid_file.read_text())
    run.stop(timeout=20)  # SIGTERM, as timeout sends it; SIGKILL only after 20 s
    assert not pathlib.Path(f"/proc/{child}").exists() or _is_zombie(child), (
        "the fixture's child outlived the run: " + run.log_path.read_text()[-1000:]
    )


def _is_zombie(pid: int) -> bool:
    return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
