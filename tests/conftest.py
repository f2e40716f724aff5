"""Fixtures: in-process services for the unit tier, a process stack for the service tier,
the whole system for the system and contract tiers; each test's tier marks from its folder."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from services.inventory.config import InventoryConfig
from services.inventory.service import create as create_inventory
from services.order.config import OrderConfig
from services.order.service import create as create_order
from services.payment.config import PaymentConfig
from services.payment.service import create as create_payment
from shopmesh.check import workdir_databases
from shopmesh.postgres import Cluster
from shopmesh.seed import write_seed
from shopmesh.system import System
from tests.helpers import (
    ACCOUNTS,
    FAULT_TABLE,
    PRODUCTS,
    Client,
    FaultResult,
    Ledger,
    Served,
    serving,
    stop_on_sigterm,
)
from tests.postgres_harness import running_cluster
from tests.stack import DatabaseFactory, Stack, StackFactory, server_databases, stack_factory
from tests.system_helpers import SystemFactory, start_test_system, system_factory

TESTS = pathlib.Path(__file__).parent
TIERS = ("unit", "service", "system", "contract")
"""The folders under tests/, each a marker of the same name. A test outside tests/unit
also carries `system` (it starts a process), so `-m "not system"` is the unit tier alone:
the fast loop, which starts no process (tests/unit/conftest.py makes sure)."""


BACKENDS = ("sqlite", "postgresql")
SESSION_CLUSTER = pytest.StashKey[Cluster]()
_SESSION_CLUSTER_EXIT = pytest.StashKey[contextlib.ExitStack]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=BACKENDS,
        default="sqlite",
        help="the stores' backend for the tests that take one (`backend` fixture): sqlite"
        " (the default, and the fast loop's) or postgresql (a server of the session's own)",
    )


def pytest_configure(config: pytest.Config) -> None:
    stop_on_sigterm()
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_WorkerResults(), "shopmesh-worker-results")


class _WorkerResults:
    """Under pytest-xdist (make test's two workers) the tests run, and the lists the
    summary prints are filled, in the workers: each worker hands its lists over as it
    ends (`workeroutput`), and the controller, which prints the summary, gathers them."""

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        output = getattr(session.config, "workeroutput", None)
        if output is not None:  # in a worker
            output["faults"] = [dataclasses.astuple(r) for r in FAULT_TABLE]
            output["not_on_postgresql"] = session.config.stash.get(NOT_ON_POSTGRESQL, [])

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", {})
        FAULT_TABLE.extend(FaultResult(*r) for r in output.get("faults", []))
        gathered = node.config.stash.setdefault(NOT_ON_POSTGRESQL, [])
        for entry in output.get("not_on_postgresql", []):
            if tuple(entry) not in gathered:  # every worker collects (and drops) them all
                gathered.append(tuple(entry))


def pytest_sessionstart(session: pytest.Session) -> None:
    """With --backend postgresql, one server for the whole session, started here, before
    any test: so the unit tier's tests, which may start no process, can use it too."""
    if session.config.getoption("backend") != "postgresql":
        return
    exits = contextlib.ExitStack()
    session.config.stash[SESSION_CLUSTER] = exits.enter_context(running_cluster())
    session.config.stash[_SESSION_CLUSTER_EXIT] = exits


def pytest_sessionfinish(session: pytest.Session) -> None:
    exits = session.config.stash.get(_SESSION_CLUSTER_EXIT, None)
    if exits is not None:
        exits.close()  # stops the server by PID and removes its directory


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """The stores' backend these tests run on (--backend): "sqlite" or "postgresql"."""
    return str(request.config.getoption("backend"))


@pytest.fixture(scope="session")
def session_cluster(request: pytest.FixtureRequest, backend: str) -> Cluster:
    """The session's PostgreSQL server (--backend postgresql only)."""
    if backend != "postgresql":
        raise pytest.UsageError("session_cluster needs --backend postgresql")
    return request.config.stash[SESSION_CLUSTER]


@pytest.fixture(scope="session")
def new_databases(request: pytest.FixtureRequest, backend: str) -> DatabaseFactory:
    """A database per service for one stack or system, given its folder: on sqlite the
    files `<folder>/<service>.db`; on postgresql a new role and database per service on
    the session's server, so that no two stacks share a row."""
    if backend == "postgresql":
        cluster: Cluster = request.getfixturevalue("session_cluster")
        return server_databases(cluster)
    return workdir_databases


NOT_ON_POSTGRESQL = pytest.StashKey[list[tuple[str, str]]]()


def deselect_sqlite_only(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --backend postgresql, the tests marked `sqlite_only` are deselected and named,
    with their reason, at the end of the run: never a silent skip."""
    if config.getoption("backend") != "postgresql":
        return
    kept, dropped = [], []
    for item in items:
        mark = item.get_closest_marker("sqlite_only")
        if mark is None:
            kept.append(item)
            continue
        if not mark.args or not isinstance(mark.args[0], str):
            raise pytest.UsageError(f"{item.nodeid}: sqlite_only needs a reason")
        dropped.append(item)
        config.stash.setdefault(NOT_ON_POSTGRESQL, []).append((item.nodeid, mark.args[0]))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def deselect_backend_free(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --backend postgresql, the tests that take no backend (no `backend` fixture,
    directly or through another: `open_store`, the stacks' and systems' databases) are
    deselected too: they would only run again as they ran on SQLite. pytest counts them
    among the deselected."""
    if config.getoption("backend") != "postgresql":
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        takes_backend = "backend" in getattr(item, "fixturenames", ())
        (kept if takes_backend else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(TESTS):
            continue  # not one of ours
        folder = item.path.relative_to(TESTS).parts[0]
        if folder not in TIERS:
            tiers = ", ".join(f"tests/{tier}" for tier in TIERS)
            raise pytest.UsageError(f"{item.nodeid} is in no tier: move it to one of {tiers}")
        item.add_marker(folder)
        if folder != "unit":
            item.add_marker("system")
    deselect_sqlite_only(config, items)
    deselect_backend_free(config, items)


@pytest.fixture
def seed_file(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_seed(tmp_path / "seed.json", PRODUCTS, ACCOUNTS)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger({s: stock for s, (_, stock) in PRODUCTS.items()}, dict(ACCOUNTS))


@pytest.fixture
async def inventory_served(
    tmp_path: pathlib.Path, seed_file: pathlib.Path
) -> AsyncIterator[Served]:
    config = InventoryConfig(db_path=tmp_path / "inventory.db", seed_file=seed_file)
    async with serving(await create_inventory(config)) as served:
        yield served


@pytest.fixture
async def payment_served(tmp_path: pathlib.Path, seed_file: pathlib.Path) -> AsyncIterator[Served]:
    config = PaymentConfig(db_path=tmp_path / "payment.db", seed_file=seed_file)
    async with serving(await create_payment(config)) as served:
        yield served


@pytest.fixture
def inventory_channel(inventory_served: Served) -> grpc.aio.Channel:
    return inventory_served.channel


@pytest.fixture
def payment_channel(payment_served: Served) -> grpc.aio.Channel:
    return payment_served.channel


@pytest.fixture
async def order_channel(
    tmp_path: pathlib.Path, inventory_served: Served, payment_served: Served
) -> AsyncIterator[grpc.aio.Channel]:
    """The order service in this process, its saga calling inventory and payment here too."""
    config = OrderConfig(
        db_path=tmp_path / "order.db",
        inventory_target=inventory_served.target,
        payment_target=payment_served.target,
    )
    async with serving(await create_order(config)) as served:
        yield served.channel


@pytest.fixture
def make_stack(
    tmp_path: pathlib.Path, seed_file: pathlib.Path, new_databases: DatabaseFactory
) -> Iterator[StackFactory]:
    """Starts the three services as processes (order settings as keyword arguments), on
    the session's backend; stops them, by PID, after the test."""
    with stack_factory(tmp_path / "stack", seed_file, new_databases) as make:
        yield make


@pytest.fixture
def stack(make_stack: StackFactory) -> tuple[Stack, Client]:
    """A stack with short retry budgets, so fault tests end quickly, and room for the race
    tests' 50 concurrent orders of one user (the default open-order quota is 10)."""
    return make_stack(
        call_timeout_seconds="1",
        step_retry_seconds="3",
        max_backoff_seconds="0.5",
        max_open_orders_per_user="100",
    )


@pytest.fixture(scope="module")
def system(
    tmp_path_factory: pytest.TempPathFactory, new_databases: DatabaseFactory
) -> Iterator[System]:
    """The whole system (Consul, control plane, one instance of each service, Envoy) on free
    ports and the session's backend, shared by the tests of one module; stopped by PID
    afterwards. Its gateway has no rate limit in the way (UNTHROTTLED): these tests send
    many calls per user, and are about something else."""
    started = start_test_system(tmp_path_factory.mktemp("system"), new_databases)
    yield started
    started.stop()


@pytest.fixture
def make_system(tmp_path: pathlib.Path, new_databases: DatabaseFactory) -> Iterator[SystemFactory]:
    """Starts a whole system per call on the session's backend (Settings fields as keyword
    arguments; the gateway's limits UNTHROTTLED unless `envoy_limits` is given); stops
    every one, by PID, after the test."""
    with system_factory(tmp_path, new_databases) as make:
        yield make


@pytest.fixture(scope="module")
def postgres_cluster() -> Iterator[Cluster]:
    """A PostgreSQL 15 server of its own for the tests of one module (shopmesh/postgres.py:
    SCRAM only, a role and a database per service, `postgres_cluster.dsn("inventory")`;
    `ensure_database(name)` adds a fresh pair); stopped by PID afterwards. One per module
    rather than per session: no two servers run at once, no module sees another's rows,
    and a start costs 1 to 3 s here (initdb included)."""
    with running_cluster() as cluster:
        yield cluster


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The tests not run on PostgreSQL and why; the fault tests' results as one table:
    what was broken, what callers saw."""
    not_run = config.stash.get(NOT_ON_POSTGRESQL, [])
    if not_run:
        terminalreporter.section("not run on postgresql (sqlite_only)")
        by_reason: dict[str, list[str]] = {}
        for nodeid, reason in not_run:
            by_reason.setdefault(reason, []).append(nodeid)
        for reason, nodeids in by_reason.items():
            terminalreporter.write_line(f"{reason}:")
            for nodeid in nodeids:
                terminalreporter.write_line(f"  {nodeid}")
    if not FAULT_TABLE:
        return
    terminalreporter.section("faults")
    header = f"{'fault':<58} {'sent':>6} {'ok':>6} {'failed':>6} {'unknown':>7}  invariants"
    terminalreporter.write_line(header)
    for r in FAULT_TABLE:
        sent = r.ok + r.failed + r.unknown
        terminalreporter.write_line(
            f"{r.fault:<58} {sent:>6} {r.ok:>6} {r.failed:>6} {r.unknown:>7}  {r.invariants}"
        )
