"""A throwaway PostgreSQL 15 for bench/pg_drivers.py: a cluster in a temporary directory,
SCRAM passwords, loopback only, a free port, stopped by its PID.

Deliberately small and apart from the services' own server code: these measurements
must not depend on how the system runs its server, only on Debian's binaries. Durability
is PostgreSQL's default (fsync=on, synchronous_commit=on) and is checked after start.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from shopmesh.tools import free_ports

BIN = pathlib.Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
STOP_TIMEOUT_SECONDS = 30.0
TICKS = os.sysconf("SC_CLK_TCK")


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: as root they run as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Server:
    root: pathlib.Path
    port: int
    password: str
    pid: int

    def dsn(self, database: str = "postgres") -> str:
        return (
            f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"
            "?sslmode=disable"
        )

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the postmaster and every process it started, live
        or exited (an exited backend's time is in the postmaster's cutime/cstime)."""
        total = _cpu_ticks(self.pid, children_too=True)
        for entry in pathlib.Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError):
                    if _ppid(int(entry.name)) == self.pid:
                        total += _cpu_ticks(int(entry.name), children_too=True)
        return total / TICKS

    def backends(self) -> int:
        return sum(
            1
            for entry in pathlib.Path("/proc").iterdir()
            if entry.name.isdigit() and _safe_ppid(int(entry.name)) == self.pid
        )

    def stop(self) -> None:
        """Fast shutdown (SIGINT) by PID, waited for; SIGKILL if it does not exit."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            while pathlib.Path(f"/proc/{self.pid}").exists() and _state(self.pid) != "Z":
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)


def _stat_fields(pid: int) -> list[str]:
    text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return _stat_fields(pid)[0]
    return "X"


def _ppid(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def _safe_ppid(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return _ppid(pid)
    return -1


def _cpu_ticks(pid: int, children_too: bool) -> int:
    fields = _stat_fields(pid)
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return utime + stime + (cutime + cstime if children_too else 0)


def start(settings: Mapping[str, str] = {}) -> Server:
    """initdb (SCRAM for every connection, a random superuser password) and start."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="shopmesh-pg-"))
    password = secrets.token_urlsafe(24)
    (root / "pwfile").write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pwfile", "postgres")
    data = root / "data"
    subprocess.run(
        _as_postgres(
            [
                str(BIN / "initdb"),
                *("-D", str(data), "-U", SUPERUSER, "-A", "scram-sha-256"),
                f"--pwfile={root / 'pwfile'}",
                "--encoding=UTF8",
                "--locale=C",
            ]
        ),
        check=True,
        capture_output=True,
    )
    (root / "pwfile").unlink()
    [port] = free_ports(1)
    options = {
        "port": str(port),
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(root),
        **settings,
    }
    subprocess.run(
        _as_postgres(
            [
                str(BIN / "pg_ctl"),
                *("-D", str(data), "-l", str(root / "log"), "-w", "-t", "30"),
                "-o",
                " ".join(f"-c {k}={v}" for k, v in options.items()),
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return Server(root, port, password, pid)


@contextlib.contextmanager
def running(settings: Mapping[str, str] = {}) -> Iterator[Server]:
    server = start(settings)
    try:
        yield server
    finally:
        server.stop()
