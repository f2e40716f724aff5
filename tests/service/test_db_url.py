"""A service process on PostgreSQL, chosen by `--db-url` with `--db-password-file`, on a
real server of this module's own (whatever the session's backend): it serves from its
database, a login the server refuses or a server that is not there stops the start with
one line and exit status 1, and `shopmesh migrate` takes the same URL."""

from __future__ import annotations

import os
import pathlib
import sys

import grpc
import psycopg

from shop.inventory.v1 import inventory_service_pb2 as rpc
from shop.inventory.v1.inventory_service_pb2_grpc import InventoryServiceStub
from shopmesh.postgres import Cluster
from shopmesh.tools import free_ports
from tests.helpers import PRODUCTS, run_command
from tests.stack import start_service


def test_a_service_on_postgresql_serves_from_its_database(
    postgres_cluster: Cluster, tmp_path: pathlib.Path, seed_file: pathlib.Path
) -> None:
    database = postgres_cluster.service_database("inventory_serves")
    inventory = start_service(
        "inventory", tmp_path, settings={"seed_file": str(seed_file)}, database=database
    )
    try:
        # What `ps` shows every user of the host: the URL, never the password.
        shown = pathlib.Path(f"/proc/{inventory.pid}/cmdline").read_bytes().decode()
        assert database.url in shown.split("\0")
        assert database.password_file.read_text().strip() not in shown
        with grpc.insecure_channel(inventory.target) as channel:
            product = InventoryServiceStub(channel).GetProduct(
                rpc.GetProductRequest(sku="SKU-TEA"), timeout=5
            )
        assert product.product.available_quantity == PRODUCTS["SKU-TEA"][1]
    finally:
        inventory.stop()
    assert not list(tmp_path.glob("*.db"))
    with psycopg.connect(postgres_cluster.dsn("inventory_serves"), connect_timeout=5) as conn:
        (count,) = conn.execute("SELECT count(*) FROM products").fetchone() or (0,)
    assert count == len(PRODUCTS)


def start_fails(*flags: str) -> str:
    """What a service that cannot start on its database said; fails unless it exited 1."""
    started = run_command(
        [sys.executable, "-m", "services.inventory", *flags], expect=1, timeout=30
    )
    assert "Traceback" not in started.stderr, started.stderr
    return started.stderr


def test_a_refused_login_or_an_absent_server_stops_the_start_in_one_line(
    postgres_cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    database = postgres_cluster.service_database("inventory_refused")
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    said = start_fails("--db-url", database.url, "--db-password-file", str(wrong))
    assert "inventory cannot start: connection failed: " in said
    assert 'password authentication failed for user "inventory_refused"' in said
    assert "not-the-password" not in said
    [nobody] = free_ports(1)
    elsewhere = database.url.replace(f":{postgres_cluster.port}/", f":{nobody}/")
    said = start_fails("--db-url", elsewhere, "--db-password-file", str(database.password_file))
    assert "inventory cannot start: connection failed: " in said and "refused" in said
    assert database.password_file.read_text().strip() not in said


def test_shopmesh_migrate_applies_and_lists_on_a_url(postgres_cluster: Cluster) -> None:
    database = postgres_cluster.service_database("payment_migrated")
    shopmesh = [str(pathlib.Path(sys.executable).parent / "shopmesh"), "migrate"]
    flags = ["--service", "payment", "--db", database.url, "--db-password-file"]
    flags.append(str(database.password_file))
    ran = run_command([*shopmesh, *flags], timeout=60)
    assert ran.stdout == (
        f"{database.url}: applied 0001_initial, 0002_expire_old_authorizations, 0003_outbox\n"
    )
    assert run_command([*shopmesh, *flags], timeout=60).stdout == f"{database.url}: up to date\n"
    listed = run_command([*shopmesh, *flags, "--list"], timeout=60).stdout
    assert listed == (
        "applied  0001_initial\napplied  0002_expire_old_authorizations\napplied  0003_outbox\n"
    )
    # The password reached the server from the file, never a command line or the output.
    assert database.password_file.read_text().strip() not in ran.stdout + ran.stderr
    assert os.stat(database.password_file).st_mode & 0o077 == 0
