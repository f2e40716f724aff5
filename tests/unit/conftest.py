"""The unit tier runs in this process: a test here that starts a process fails, so that
`pytest -m "not system"` stays a fast loop with nothing to start or stop."""

from __future__ import annotations

import _posixsubprocess
import contextlib
import os
import pathlib
import subprocess
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import pytest

from tests.stores import SessionDatabases, StoreOpener

# Every way a Python program starts a process ends in one of these: subprocess (also under
# asyncio's create_subprocess_*, os.popen), fork (multiprocessing, os.spawn*, pty), spawn.
SPAWNERS: list[tuple[Any, str]] = [
    (subprocess.Popen, "_execute_child"),
    (_posixsubprocess, "fork_exec"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
]


@contextlib.contextmanager
def no_processes(item: pytest.Item) -> Iterator[None]:
    """Fails `item` if it starts a process, even if its code catches the refusal."""
    tried: list[str] = []

    def refuse(name: str) -> Any:
        def refused(*args: object, **kwargs: object) -> None:
            tried.append(name)
            pytest.fail(
                f"{item.nodeid} starts a process ({name}), but tests/unit starts none:"
                " move it to tests/service, tests/system or tests/contract"
            )

        return refused

    with pytest.MonkeyPatch.context() as patch:
        for owner, name in SPAWNERS:
            patch.setattr(owner, name, refuse(name))
        yield
    if tried:
        pytest.fail(f"{item.nodeid} started a process ({', '.join(tried)}) and hid the failure")


# Setup and teardown too: a module-scoped fixture starts there.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    with no_processes(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    with no_processes(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    with no_processes(item):
        return (yield)


@pytest.fixture(scope="session")
def store_databases(request: pytest.FixtureRequest, backend: str) -> SessionDatabases | None:
    """The session server's database of each service, for `open_store` (None on SQLite)."""
    if backend != "postgresql":
        return None
    return SessionDatabases(request.getfixturevalue("session_cluster"))


@pytest.fixture
async def open_store(
    backend: str, tmp_path: pathlib.Path, store_databases: SessionDatabases | None
) -> AsyncIterator[StoreOpener]:
    """`await open_store(OrderStore)`: a store on the session's backend, a SQLite file in
    tmp_path or the service's database on the session's server, emptied for this test
    (tests/stores.py). Twice for one service: two stores (two instances) on one database.
    Every store is closed after the test."""
    opener = StoreOpener(backend, tmp_path, store_databases)
    try:
        yield opener
    finally:
        await opener.close()
