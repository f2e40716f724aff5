"""The parts of the local system as child processes: one `Process` for every part, and
the `Supervisor` that restarts them.

Consul, Envoy, the control plane and each service instance are a `Process` each: a
command, a log file, and a readiness check that is polled, never assumed after a sleep
(Consul has a leader, Envoy is live, a service has written its ready file). Stopping is
by PID: SIGTERM (a service deregisters and drains), then SIGKILL if it does not exit in
time. The supervisor starts a part that exited again, on the same command, after a
backoff, as systemd's Restart=on-failure would, and gives up on a crash loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

from shopmesh.tools import REPO

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0


class StartError(RuntimeError):
    """A part did not become ready; the message ends with the tail of its log."""


class Process:
    """One part of the system: its command, its log, when it is ready, its OS process."""

    def __init__(
        self,
        label: str,
        log_path: pathlib.Path,
        command: Sequence[str] = (),
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.label = label
        """How logs and messages name the part: `consul`, `inventory-2`."""
        self.log_path = log_path
        self.command = list(command)
        self._ready = ready
        self.env: dict[str, str] = {}
        """Environment variables to add at the next start (e.g. a test's LD_PRELOAD)."""
        self.runner: list[str] = []
        """What the command runs under: on a test host, `ip netns exec <host>`
        (shopmesh/hosts.py), which becomes the command (the PID stays the part's)."""
        self._process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        """The command line of the next start."""
        return list(self.command)

    def is_ready(self) -> bool:
        """Whether the part serves now (without a check of its own: whether it runs)."""
        return self._ready() if self._ready is not None else self.running()

    def start(self) -> Self:
        """Starts the command without waiting for it to be ready; appends to the log."""
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [*self.runner, *self.argv()],
                cwd=REPO,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env} if self.env else None,
                # A process group of its own: a terminal's Ctrl-C (SIGINT to the foreground
                # group) reaches only the parent, which stops the parts in order. In the
                # parent's group, Consul got it with the services and exited while they
                # were still deregistering.
                process_group=0,
            )
        return self

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The OS process of the last start."""
        if self._process is None:
            raise RuntimeError(f"{self.label} was never started")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_until(
        self, ready: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_SECONDS
    ) -> Self:
        """Polls `ready`; StartError (and the part stopped) if the part exits first or the
        time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running() or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise StartError(f"{self.label}: {what} did not happen; its log ends:\n{tail}")
            time.sleep(0.02)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> Self:
        return self.wait_until(self.is_ready, "becoming ready", timeout)

    def signal(self, signum: int) -> None:
        if self._process is not None:
            signal_process(self._process, signum)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM, wait, then SIGKILL; the exit code (None if it never started)."""
        return stop_process(self._process, timeout) if self._process is not None else None

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self._process is not None:
            kill_process(self._process)

    def exit_status(self) -> str:
        """How the last start ended: `exited with code 1`, `exited with signal 9`."""
        code = self.process.poll()
        if code is None:
            return "is running"
        return f"exited with signal {-code}" if code < 0 else f"exited with code {code}"


class ServiceProcess(Process):
    """One service instance (or the control plane): `python -m <module>` with its settings
    as flags, ready once it has written its ready file (after its health turns SERVING),
    which names the port it bound."""

    def __init__(
        self,
        name: str,
        workdir: pathlib.Path,
        *,
        port: int = 0,
        settings: Mapping[str, str] | None = None,
        module: str = "",
        instance: int = 1,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.module = module or f"services.{name}"
        self.instance = instance
        self.settings = dict(settings or {})
        """Flags by field name (e.g. {"db_path": "..."}), without port and ready file."""
        self.requested_port = port
        self.port = port
        """The port it serves on once ready (0 before, if `requested_port` is 0)."""
        self._served = False
        label = name if instance == 1 else f"{name}-{instance}"
        super().__init__(label, workdir / f"{label}.log")

    @property
    def ready_path(self) -> pathlib.Path:
        return self.workdir / f"{self.label}.ready"

    @property
    def target(self) -> str:
        return f"{self.settings.get('host', '127.0.0.1')}:{self.port}"

    def argv(self) -> list[str]:
        # Started again after it served, it takes the port it had: its Consul registration
        # (named by the port) and Envoy's endpoint stay the same, so no stale entry is left.
        # If that start never got to serve (the port taken meanwhile?), the next asks anew.
        port = self.port if self._served else self.requested_port
        self._served = False
        self.ready_path.unlink(missing_ok=True)  # a stale one would read as ready
        flags = {**self.settings, "port": str(port), "ready_file": str(self.ready_path)}
        command = [sys.executable, "-m", self.module]
        for key, value in flags.items():
            command += [f"--{key.replace('_', '-')}", value]
        return command

    def is_ready(self) -> bool:
        if not self.ready_path.exists():  # written whole (renamed into place) or not at all
            return False
        self.port = json.loads(self.ready_path.read_text())["port"]
        self._served = True
        return True


def signal_process(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signals a child that has not exited (one that has is left alone)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> int:
    """SIGTERM, wait up to `timeout`, then SIGKILL; the exit code."""
    signal_process(process, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
    signal_process(process, signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_process(process, signal.SIGKILL)
    return process.wait()


def stop_together(parts: Sequence[Process], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """Stops `parts` at once (SIGTERM to each, then a shared wait of up to `timeout`,
    then SIGKILL for any still running), so each drains while the others do."""
    running = [p.process for p in parts if p.running()]
    for process in running:
        signal_process(process, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        signal_process(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            kill_process(process)


def kill_process(process: subprocess.Popen[bytes]) -> None:
    """kill -9 and reap, as a crash would end it."""
    signal_process(process, signal.SIGKILL)
    process.wait()


def spawn_service(
    name: str,
    workdir: pathlib.Path,
    *,
    port: int = 0,
    settings: Mapping[str, str] | None = None,
    module: str = "",
    instance: int = 1,
) -> ServiceProcess:
    """Starts `python -m <module>` (default `services.<name>`) without waiting for it;
    its log and ready file go in `workdir`.

    `settings` are its flags by field name (e.g. {"payment_target": "..."}).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    service = ServiceProcess(
        name, workdir, port=port, settings=settings, module=module, instance=instance
    )
    return service.start()


@dataclass(frozen=True)
class RestartPolicy:
    """When a part that exited is started again, and when the supervisor gives up on it."""

    first_delay_seconds: float = 0.5
    """The wait before the first restart; it doubles with each crash within the window."""
    max_delay_seconds: float = 8.0
    """The longest wait between a crash and the restart."""
    crash_limit: int = 5
    """This many crashes of one part within `window_seconds` is a crash loop: give up."""
    window_seconds: float = 60.0
    """How far back crashes count, for the loop and for the backoff."""
    ready_timeout_seconds: float = 30.0
    """A restarted part not ready by then is killed, and that counts as a crash."""

    def delay(self, recent_crashes: int) -> float:
        """The wait after the `recent_crashes`-th crash within the window."""
        return min(self.first_delay_seconds * 2.0 ** (recent_crashes - 1), self.max_delay_seconds)


class CrashLoop(Exception):
    """A part crashed `crash_limit` times within the window: the supervisor gave up on it."""

    def __init__(self, part: Process, message: str) -> None:
        super().__init__(message)
        self.part = part


@dataclass
class _Watch:
    """What the supervisor knows about one part."""

    part: Process
    crashes: deque[float] = field(default_factory=deque)
    restarts: int = 0
    restart_at: float | None = None
    """Set while the part waits out its backoff."""
    started_at: float | None = None
    """Set from a restart until the part is ready."""


class Supervisor:
    """Watches running parts and restarts the ones that exit; raises CrashLoop on a loop.

    It polls (`check`, or `run` until told to stop) rather than blocking on any one part,
    so a part waiting out its backoff or its readiness holds up no other part's restart.
    The parts must have been started (and be ready) before the first check.
    """

    def __init__(
        self,
        parts: Sequence[Process],
        policy: RestartPolicy = RestartPolicy(),
    ) -> None:
        self._watches = [_Watch(part) for part in parts]
        self._policy = policy

    def run(self, stopping: Callable[[], bool], interval: float = 0.1) -> None:
        """Checks every `interval` until `stopping()`; CrashLoop if a part loops."""
        while not stopping():
            self.check()
            time.sleep(interval)

    def check(self) -> None:
        """One round over every part: restart those whose backoff is over, note those that
        became ready again, and schedule a restart for each that exited."""
        for watch in self._watches:
            self._check(watch, time.monotonic())

    def _check(self, watch: _Watch, now: float) -> None:
        part = watch.part
        if watch.restart_at is not None:
            if now >= watch.restart_at:
                watch.restart_at, watch.started_at = None, now
                part.start()
            return
        if not part.running():
            self._crashed(watch, now, part.exit_status())
        elif watch.started_at is not None:
            if part.is_ready():
                log.info(
                    "%s is back (pid %d, ready %.1f s after restart %d)",
                    part.label,
                    part.pid,
                    now - watch.started_at,
                    watch.restarts,
                )
                watch.started_at = None
            elif now - watch.started_at > self._policy.ready_timeout_seconds:
                part.kill()
                self._crashed(
                    watch,
                    now,
                    f"was not ready {self._policy.ready_timeout_seconds:g} s after its restart",
                )

    def _crashed(self, watch: _Watch, now: float, how: str) -> None:
        policy = self._policy
        watch.started_at = None
        watch.crashes.append(now)
        while watch.crashes[0] < now - policy.window_seconds:
            watch.crashes.popleft()
        part, recent = watch.part, len(watch.crashes)
        if recent >= policy.crash_limit:
            raise CrashLoop(
                part,
                f"{part.label} crashed {recent} times in {policy.window_seconds:g} s (last: it"
                f" {how}): giving up on it; see {part.log_path}",
            )
        delay = policy.delay(recent)
        watch.restarts += 1
        watch.restart_at = now + delay
        log.warning(
            "%s %s; restarting in %g s (restart %d)", part.label, how, delay, watch.restarts
        )
