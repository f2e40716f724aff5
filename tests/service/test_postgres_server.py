"""The local PostgreSQL cluster (shopmesh/postgres.py) on the real server: each service's
role reaches its own database only, every login needs the role's own password, the
passwords are the caller's alone and nowhere else in plaintext, and a second start on the
same workdir finds the same cluster, roles, passwords and data.

The first two tests run servers of their own, one after the other, before the module's
shared one (`postgres_cluster`) starts: never two at once."""

from __future__ import annotations

import os
import pathlib
import pwd
import re
import signal
import stat
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import TupleRow

from shopmesh.postgres import HOST, SERVICES, Cluster
from shopmesh.processes import STOP_TIMEOUT_SECONDS, Process, StartError
from shopmesh.tools import BIN
from tests.postgres_harness import postgres_workdir

NO_PASSFILE = "/nonexistent/pgpass"
"""libpq reads ~/.pgpass when a login names no password: not in these tests."""


@pytest.fixture(autouse=True)
def no_ambient_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A login without a password must not pick one up from the environment."""
    monkeypatch.delenv("PGPASSWORD", raising=False)


def password(cluster: Cluster, role: str) -> str:
    return cluster.password_file(role).read_text().strip()


def login(
    cluster: Cluster, role: str, secret: str | None, dbname: str = ""
) -> psycopg.Connection[TupleRow]:
    """A TCP login, as a service makes it."""
    return psycopg.connect(
        host=HOST,
        port=cluster.port,
        user=role,
        dbname=dbname or role,
        connect_timeout=5,
        passfile=NO_PASSFILE,
        password=secret,  # None: no password parameter at all
    )


def refused(cluster: Cluster, role: str, secret: str | None, dbname: str = "") -> str:
    """Why the server refuses the login; fails the test if it lets it in."""
    with pytest.raises(psycopg.OperationalError) as raised:
        login(cluster, role, secret, dbname).close()
    return str(raised.value)


def owner_uid() -> int:
    """Whom the server and its data belong to: the postgres OS user under root."""
    return pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()


def role_oids(cluster: Cluster) -> dict[str, int]:
    with cluster.admin() as conn:
        rows = conn.execute(
            "SELECT rolname, oid::int FROM pg_roles WHERE rolname = ANY(%s)", [list(SERVICES)]
        ).fetchall()
    return {str(name): int(oid) for name, oid in rows}


def test_a_second_start_on_the_same_workdir_finds_the_same_cluster_roles_passwords_and_data() -> (
    None
):
    with postgres_workdir() as workdir:
        first = Cluster(workdir).start()
        try:
            assert first.initdb_seconds is not None  # a new cluster
            dsns = first.ensure_databases()
            with psycopg.connect(dsns["inventory"]) as conn:
                conn.execute("CREATE TABLE stock (sku text PRIMARY KEY, units int NOT NULL)")
                conn.execute("INSERT INTO stock VALUES ('SKU-TEA', 100)")
            secrets = {f.name: f.read_bytes() for f in first.secrets.iterdir()}
            oids = role_oids(first)
            pid = first.process.pid
            # An idle client, as a pool keeps: the smart shutdown (SIGTERM) would wait for
            # it until the SIGKILL; the fast one disconnects it.
            idle = psycopg.connect(dsns["payment"])
        finally:
            began = time.monotonic()
            code = first.stop()
            stopped_in = time.monotonic() - began
        idle.close()
        assert code == 0  # the fast shutdown finished, no SIGKILL needed
        assert stopped_in < STOP_TIMEOUT_SECONDS / 2
        assert not pathlib.Path(f"/proc/{pid}").exists()
        assert not (first.data / "postmaster.pid").exists()  # removed by a clean shutdown

        second = Cluster(workdir).start()
        try:
            assert second.initdb_seconds is None  # the same cluster, not a new one
            again = second.ensure_databases()
            assert {f.name: f.read_bytes() for f in second.secrets.iterdir()} == secrets
            assert role_oids(second) == oids
            with psycopg.connect(again["inventory"]) as conn:
                assert conn.execute("SELECT sku, units FROM stock").fetchall() == [("SKU-TEA", 100)]
        finally:
            assert second.stop() == 0


def test_shopmesh_postgres_runs_the_cluster_until_ctrl_c() -> None:
    with postgres_workdir() as workdir:
        data = workdir / "postgres" / "data"
        log = workdir / "shopmesh-postgres.log"
        command = Process(
            "shopmesh-postgres",
            log,
            [str(BIN / "shopmesh"), "postgres", "--workdir", str(workdir)],
            ready=lambda: "Press Ctrl-C" in log.read_text(),
        ).start()
        try:
            command.wait_ready()
            printed = log.read_text()
            secrets = workdir / "postgres" / "secrets"
            assert f"password in {secrets}/postgres.password" in printed
            assert f"passwords   {secrets}/<role>.password (mode 0600)" in printed
            assert "--db-url postgresql://inventory@127.0.0.1:" in printed
            found = re.search(r"server      127\.0\.0\.1:(\d+)", printed)
            assert found is not None, printed
            cluster = Cluster(workdir)
            cluster.port = int(found[1])
            for service in SERVICES:
                with login(cluster, service, password(cluster, service)) as conn:
                    assert conn.execute("SELECT current_user").fetchone() == (service,)
            command.signal(signal.SIGINT)
            assert command.process.wait(20) == 0
        finally:
            command.stop()
        assert log.read_text().endswith("stopping...\nstopped.\n")
        assert not (data / "postmaster.pid").exists()


def test_a_workdir_the_servers_user_cannot_reach_is_named_before_initdb() -> None:
    with postgres_workdir() as workdir:
        closed = workdir / "closed"
        closed.mkdir(mode=0o700)
        cluster = Cluster(closed)
        if os.geteuid() == 0:  # the server would run as postgres, which cannot pass `closed`
            with pytest.raises(StartError, match=f"cannot reach {closed}/postgres: {closed} "):
                cluster.start()
            assert not cluster.initialised()
        else:  # the server runs as the caller, who can
            cluster.start()
            assert cluster.stop() == 0


def test_the_server_and_its_data_belong_to_the_postgres_user_when_run_as_root(
    postgres_cluster: Cluster,
) -> None:
    status = pathlib.Path(f"/proc/{postgres_cluster.process.pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", status, re.MULTILINE)
    assert uids is not None
    assert {int(uid) for uid in uids.groups()} == {owner_uid()}
    for directory in (postgres_cluster.data, postgres_cluster.run_dir):
        info = directory.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (owner_uid(), 0o700)


def test_inventory_cannot_connect_to_payments_database(postgres_cluster: Cluster) -> None:
    why = refused(postgres_cluster, "inventory", password(postgres_cluster, "inventory"), "payment")
    assert 'no pg_hba.conf entry for host "127.0.0.1", user "inventory", database "payment"' in why
    # Behind pg_hba, the database itself is closed to every role but its owner.
    with postgres_cluster.admin() as conn:
        for database in (*SERVICES, "postgres", "template1"):
            for role in SERVICES:
                for privilege in ("CONNECT", "TEMPORARY", "CREATE"):
                    allowed = conn.execute(
                        "SELECT has_database_privilege(%s, %s, %s)", [role, database, privilege]
                    ).fetchone()
                    assert allowed == (role == database,), (role, database, privilege)


def test_inventory_cannot_read_payments_tables(postgres_cluster: Cluster) -> None:
    with login(postgres_cluster, "payment", password(postgres_cluster, "payment")) as conn:
        conn.execute("CREATE TABLE payments (payment_id text PRIMARY KEY, amount bigint)")
        conn.execute("INSERT INTO payments VALUES ('pay-1', 900)")
        conn.commit()
        assert conn.execute("SELECT amount FROM payments").fetchall() == [(900,)]
    # inventory's role cannot log in to payment's database at all (above); a superuser
    # session there that takes on inventory's privileges is the nearest it can come.
    with postgres_cluster.admin("payment") as conn:
        conn.execute("SET ROLE inventory")
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
            conn.execute("SELECT amount FROM public.payments")
        conn.execute("RESET ROLE")
        schema_usage = conn.execute("SELECT has_schema_privilege('inventory', 'public', 'USAGE')")
        assert schema_usage.fetchone() == (False,)
        table_select = conn.execute(
            "SELECT has_table_privilege('inventory', 'public.payments', 'SELECT')"
        )
        assert table_select.fetchone() == (False,)
    # Nor can it name them from its own database: PostgreSQL has no cross-database queries.
    inventory = login(postgres_cluster, "inventory", password(postgres_cluster, "inventory"))
    with inventory, pytest.raises(errors.FeatureNotSupported, match="cross-database references"):
        inventory.execute("SELECT amount FROM payment.public.payments")


@pytest.mark.parametrize("given", ["no password", "a wrong one", "payment's password"])
def test_a_login_without_the_roles_own_password_fails(
    postgres_cluster: Cluster, given: str
) -> None:
    secret = {
        "no password": None,
        "a wrong one": "not-the-password",
        "payment's password": password(postgres_cluster, "payment"),
    }[given]
    why = refused(postgres_cluster, "inventory", secret)
    expected = "no password supplied" if secret is None else "password authentication failed"
    assert expected in why
    with login(postgres_cluster, "inventory", password(postgres_cluster, "inventory")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("inventory",)


def test_the_superuser_logs_in_over_the_unix_socket_only(postgres_cluster: Cluster) -> None:
    superuser = postgres_cluster.settings.superuser
    why = refused(postgres_cluster, superuser, password(postgres_cluster, superuser), "postgres")
    assert "pg_hba.conf rejects connection" in why
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=str(postgres_cluster.run_dir),
            port=postgres_cluster.port,
            user=superuser,
            password="not-the-password",
            dbname="postgres",
            passfile=NO_PASSFILE,
        ).close()
    with postgres_cluster.admin() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (superuser,)


def test_pg_hba_has_scram_or_reject_and_no_trust(postgres_cluster: Cluster) -> None:
    assert "trust" not in (postgres_cluster.data / "pg_hba.conf").read_text()
    with postgres_cluster.admin() as conn:
        rules = conn.execute(
            "SELECT type, database, user_name, address, auth_method, error"
            " FROM pg_hba_file_rules ORDER BY line_number"
        ).fetchall()
        stored = conn.execute(
            "SELECT rolname, left(rolpassword, 14) FROM pg_authid WHERE rolcanlogin"
            " ORDER BY rolname"
        ).fetchall()
        encryption = conn.execute("SHOW password_encryption").fetchone()
    assert rules == [
        ("local", ["all"], ["postgres"], None, "scram-sha-256", None),
        ("host", ["all"], ["postgres"], "127.0.0.1", "reject", None),
        ("local", ["sameuser"], ["all"], None, "scram-sha-256", None),
        ("host", ["sameuser"], ["all"], "127.0.0.1", "scram-sha-256", None),
    ]
    # Every login role's password is stored as a SCRAM verifier, none as md5 or plaintext.
    assert stored == [(role, "SCRAM-SHA-256$") for role in sorted([*SERVICES, "postgres"])]
    assert encryption == ("scram-sha-256",)


def test_the_password_files_are_the_callers_alone_and_the_plaintext_is_nowhere_else(
    postgres_cluster: Cluster,
) -> None:
    files = sorted(postgres_cluster.secrets.iterdir())
    assert [f.name for f in files] == sorted(f"{r}.password" for r in [*SERVICES, "postgres"])
    for file in files:
        info = file.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o600), file
    directory = postgres_cluster.secrets.stat()
    assert (directory.st_uid, stat.S_IMODE(directory.st_mode)) == (os.geteuid(), 0o700)
    # The server got SCRAM verifiers, never a password: none is in its log, its catalogs
    # or its WAL, nor in initdb's password file (removed).
    plaintexts = [f.read_text().strip().encode() for f in files]
    for path in files_under(postgres_cluster.root):
        if path.parent != postgres_cluster.secrets:
            content = path.read_bytes()
            assert not any(p in content for p in plaintexts), path


def files_under(root: pathlib.Path) -> Iterator[pathlib.Path]:
    for path in root.rglob("*"):
        if path.is_file():
            yield path


def test_a_password_file_open_to_others_is_refused(postgres_cluster: Cluster) -> None:
    file = postgres_cluster.password_file("order")
    file.chmod(0o644)
    try:
        with pytest.raises(StartError, match=f"{file} is open to others"):
            postgres_cluster.ensure_database("order")
    finally:
        file.chmod(0o600)
    postgres_cluster.ensure_database("order")
