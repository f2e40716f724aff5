"""A PostgreSQL cluster of its own for tests (shopmesh/postgres.py: the real server): a
fresh work directory, the server started and ready, a role and a database per service;
stopped by PID and its directory removed afterwards."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

from shopmesh.postgres import Cluster


@contextlib.contextmanager
def postgres_workdir() -> Iterator[pathlib.Path]:
    """A new directory for a cluster, removed afterwards. Not under pytest's tmp_path,
    whose base (/tmp/pytest-of-<user>) has mode 0700: when the tests run as root the
    server runs as the postgres user, which could not pass through it."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="shopmesh-postgres-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A started cluster in a new directory, with a role and database per service
    (`cluster.dsn(name)`); `cluster.ensure_database(name)` adds a fresh pair, e.g. one
    per test. Stopped by PID (fast shutdown) afterwards."""
    with postgres_workdir() as workdir:
        cluster = Cluster(workdir).start()
        try:
            cluster.ensure_databases()
            yield cluster
        finally:
            cluster.stop()
