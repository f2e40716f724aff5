"""The whole system under mutual TLS (`Settings.mutual_tls`): Envoy calls every service
over TLS with its certificate from the control plane's SDS, the internal listener admits
each identity only to its methods, no port serves a caller without our certificate, and
every certificate is renewed under order traffic without a restart or a failed call."""

from __future__ import annotations

import json
import pathlib
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import consul
import grpc
import nats
import nats.aio.client
import nats.errors
import psycopg
import pytest
import requests
from cryptography import x509

from services.common import tls
from services.common.jetstream import STREAM
from services.common.registration import ConsulAccess, consul_client
from shop.inventory.v1 import inventory_pb2
from shop.inventory.v1 import inventory_service_pb2 as inv
from shop.inventory.v1.inventory_service_pb2_grpc import InventoryServiceStub
from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as orders
from shop.order.v1.order_service_pb2_grpc import OrderServiceStub
from shop.payment.v1 import payment_service_pb2 as pay
from shop.payment.v1.payment_service_pb2_grpc import PaymentServiceStub
from shopmesh import ca
from shopmesh.system import HOLDERS, System, consul_secrets, http_get, operator_access
from tests.helpers import TLSDial, fails, wait_for
from tests.notification_helpers import messages
from tests.postgres_harness import postgres_workdir
from tests.system_helpers import Traffic, bearer, start_test_system


@pytest.fixture(scope="module")
def secure() -> Iterator[System]:
    """The system under mutual TLS with its own PostgreSQL (on TLS too), whichever
    backend the session runs on; in a directory the server's OS user can pass through."""
    with postgres_workdir() as workdir:
        started = start_test_system(workdir, mutual_tls=True, postgres=True)
        yield started
        started.stop()


def holder(system: System, name: str) -> pathlib.Path:
    """A certificate directory for `name`: the system's own, or one issued now by its CA
    (for a name the system gives none, an intruder holding our CA's certificate)."""
    directory = system.settings.certificate_dir(name)
    if not directory.exists():
        ca.issue(ca.load_ca(system.settings.workdir / "ca"), name, directory)
    return directory


def channel(target: str, mine: pathlib.Path | None, peer: str, trust: pathlib.Path) -> grpc.Channel:
    """A channel trusting `trust`'s CA, presenting `mine`'s certificate (None: none),
    accepting only a server whose certificate names `peer`."""
    return TLSDial(mine, trust, peer).channel(target)


def internal(system: System) -> str:
    return f"127.0.0.1:{system.ports.internal}"


def test_an_order_is_confirmed_through_envoy_over_mutual_tls(secure: System) -> None:
    """The order reaches the order service over TLS; the saga's calls reach inventory and
    payment through the internal listener as the order service, naming the owner."""
    with grpc.insecure_channel(secure.public_target) as public:
        created = OrderServiceStub(public).CreateOrder(
            orders.CreateOrderRequest(
                request_id="mtls-1", line_items=[order_pb2.LineItem(sku="SKU-TEA", quantity=1)]
            ),
            metadata=bearer(secure.token("alice")),
            timeout=15,
        )
    assert created.order.state == order_pb2.ORDER_STATE_CONFIRMED
    # Its OrderConfirmed went through NATS over TLS, published as the order service and
    # consumed as notification: alice is told.
    order_id = created.order.order_id
    wait_for(
        lambda: any(f"Order: {order_id}" in str(m.get_payload()) for m in messages(secure.maildir)),
        "alice's notification of the order",
    )


def test_no_port_serves_a_caller_without_our_certificate(secure: System) -> None:
    """Every service instance's port and the internal listener: plaintext, TLS with no
    client certificate, and another CA's certificate of the right name are all refused
    before any method runs (UNAVAILABLE: the handshake fails)."""
    other = ca.ensure_ca(secure.settings.workdir / "other-ca")
    foreign = ca.issue(other, "gateway", secure.settings.workdir / "foreign").cert_path.parent
    ours = secure.settings.certificate_dir("gateway")
    targets = [(p.target, p.name) for p in (*secure.instances(), *secure.reporting)]
    targets.append((internal(secure), "gateway"))
    for target, name in targets:
        attempts = {
            "plaintext": grpc.insecure_channel(target),
            "no certificate": channel(target, None, name, ours),
            "another CA's": channel(target, foreign, name, ours),
        }
        for how, attempt in attempts.items():
            with attempt:
                error = fails(
                    lambda a=attempt: InventoryServiceStub(a).GetProduct(  # type: ignore[misc]
                        inv.GetProductRequest(sku="SKU-TEA"), timeout=5
                    )
                )
            assert error.code == grpc.StatusCode.UNAVAILABLE, (target, how, error)


def test_a_service_port_serves_only_the_gateway(secure: System) -> None:
    """A certificate from our CA is not enough: the order service's own certificate,
    straight to inventory's port, gets PEER_NOT_ALLOWED."""
    target = secure.inventory[0].target
    with channel(target, holder(secure, "order"), "inventory", holder(secure, "order")) as ch:
        error = fails(
            lambda: InventoryServiceStub(ch).GetProduct(
                inv.GetProductRequest(sku="SKU-TEA"), timeout=5
            )
        )
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PEER_NOT_ALLOWED")


RESERVE = inv.ReserveStockRequest(
    order_id="mtls-rbac", items=[inventory_pb2.ReservationItem(sku="SKU-TEA", quantity=1)]
)


@pytest.mark.parametrize(
    ("identity", "admitted"),
    [
        ("order", {"ReserveStock", "VoidPayment"}),
        ("reporting", {"GetProduct"}),
        ("intruder", set()),
        ("gateway", set()),  # Envoy's own name, from elsewhere: no policy names it
    ],
)
def test_the_internal_listener_admits_each_identity_only_to_its_methods(
    secure: System, identity: str, admitted: set[str]
) -> None:
    """RBAC per method: the saga's calls for the order service, GetProduct for
    reporting, and no admin method (RestockProduct) for anyone."""
    mine = holder(secure, identity)
    user = (("x-shop-user", "alice"),)
    with channel(internal(secure), mine, "gateway", mine) as ch:
        inventory, payment = InventoryServiceStub(ch), PaymentServiceStub(ch)
        calls: dict[str, Callable[[], object]] = {
            "GetProduct": lambda: inventory.GetProduct(
                inv.GetProductRequest(sku="SKU-TEA"), timeout=5
            ),
            "ReserveStock": lambda: inventory.ReserveStock(RESERVE, metadata=user, timeout=5),
            "VoidPayment": lambda: payment.VoidPayment(
                pay.VoidPaymentRequest(order_id="mtls-rbac"), metadata=user, timeout=5
            ),
            "RestockProduct": lambda: inventory.RestockProduct(
                inv.RestockProductRequest(sku="SKU-TEA", quantity=1, request_id="mtls-r1"),
                metadata=(*user, ("x-shop-scopes", "shop.admin")),
                timeout=5,
            ),
        }
        for method, call in calls.items():
            try:
                call()
                outcome = "served"
            except grpc.RpcError as error:
                # Past RBAC, a service may still refuse (VoidPayment of no payment): only
                # Envoy's own refusal says "RBAC".
                denied = error.code() == grpc.StatusCode.PERMISSION_DENIED
                outcome = "denied" if denied and "RBAC" in (error.details() or "") else "served"
            assert outcome == ("served" if method in admitted else "denied"), (identity, method)


def envoy_serials(system: System) -> set[int]:
    """The serial numbers of the certificates Envoy holds now (its admin's /certs)."""
    status, body = http_get(f"http://127.0.0.1:{system.ports.admin}/certs")
    assert status == 200
    return {
        int(cert["serial_number"], 16)
        for entry in json.loads(body)["certificates"]
        for cert in entry.get("cert_chain", [])
    }


def served_serial(target: str, mine: pathlib.Path) -> int:
    """The serial of the certificate a new connection to `target` is shown."""
    context = ssl.create_default_context(cafile=mine / "ca.pem")
    context.check_hostname = False
    context.load_cert_chain(mine / "cert.pem", mine / "key.pem")
    context.set_alpn_protocols(["h2"])
    host, port = target.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw) as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def serial_of(directory: pathlib.Path) -> int:
    return x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes()).serial_number


def test_every_certificate_is_renewed_under_traffic_without_a_failed_call(secure: System) -> None:
    gateway = secure.settings.certificate_dir("gateway")
    with Traffic(secure, interval=0.01) as traffic:
        traffic.wait_for_ok(10)
        before = {name: serial_of(secure.settings.certificate_dir(name)) for name in HOLDERS}
        secure.renew_certificates()  # what `shopmesh run --mutual-tls` does every 20 min
        after = {name: serial_of(secure.settings.certificate_dir(name)) for name in HOLDERS}
        assert all(before[name] != after[name] for name in HOLDERS)
        renewed = serial_of(gateway)
        wait_for(lambda: renewed in envoy_serials(secure), "Envoy to hold its renewed certificate")
        for process in (*secure.instances(), *secure.reporting):
            want = serial_of(secure.settings.certificate_dir(process.name))
            wait_for(
                lambda p=process, w=want: served_serial(p.target, gateway) == w,  # type: ignore[misc]
                f"{process.name} to serve its renewed certificate",
            )
        # The order service's clients open new channels with its renewed certificate (the
        # old one would still be valid for an hour: only its log can tell), and orders
        # keep being confirmed.
        order_log = secure.order[0].log_path
        wait_for(
            lambda: order_log.read_text().count("with the renewed certificate from") >= 2,
            "the order service's two channels to be rebuilt with its renewed certificate",
        )
        traffic.wait_for_ok(30)
        # Consul's agent, reloaded with its renewed certificate, still checks every
        # instance (a check it could not make would turn them critical).
        assert secure.consul.running()
        wait_for(secure.envoy_ready, "every instance healthy in Envoy after the renewal")
    assert traffic.summary()["failed"] == 0 and traffic.summary()["unknown"] == 0, traffic.failures
    assert traffic.outcomes["ORDER_STATE_CONFIRMED"] == traffic.summary()["ok"], traffic.outcomes


def consul_as(system: System, token_of: str | None, certificate: str | None = "operator") -> Any:
    """A Consul client over HTTPS (trusting our CA) holding `token_of`'s token (None:
    none) and presenting `certificate`'s certificate (None: none)."""
    access = operator_access(system.settings)
    if certificate is not None:
        token = consul_secrets(system.settings).token_file(token_of) if token_of else None
        certificates = system.settings.certificate_dir(certificate)
        return consul_client(ConsulAccess(access.http_address, token, certificates))
    host, port = access.http_address.rsplit(":", 1)
    ours = system.settings.certificate_dir("operator") / "ca.pem"
    return consul.Consul(host=host, port=int(port), scheme="https", verify=str(ours))


@pytest.mark.parametrize(
    ("token_of", "name"),
    [(None, "payment"), ("inventory", "payment"), ("reporting", "inventory")],
    ids=["no-token", "inventory-as-payment", "reporting-as-inventory"],
)
def test_consul_refuses_a_registration_without_a_token_or_under_another_name(
    secure: System, token_of: str | None, name: str
) -> None:
    """The fake endpoint the control plane would hand to Envoy never gets in."""
    client = consul_as(secure, token_of)
    with pytest.raises(consul.ConsulException, match="Permission denied"):
        client.agent.service.register(name, service_id=f"{name}-fake", address="127.0.0.1", port=1)
    _, entries = consul_as(secure, "controlplane").health.service(name)
    assert all(e["Service"]["ID"] != f"{name}-fake" for e in entries)
    assert entries, f"the real {name} instances are still listed"


def test_consul_answers_only_holders_of_our_certificate_and_hides_the_catalog_without_a_token(
    secure: System,
) -> None:
    """ACLs alone would still answer some endpoints without a token (the leader's
    address): without a client certificate nothing answers, and plain HTTP is off."""
    leader = f"{operator_access(secure.settings).http_address}"
    with pytest.raises(requests.exceptions.SSLError):
        consul_as(secure, "controlplane", certificate=None).status.leader()
    status, body = http_get(f"http://{leader}/v1/status/leader")  # plain HTTP is off
    assert (status, body.strip()) == (400, "Client sent an HTTP request to an HTTPS server.")
    _, services = consul_as(secure, None).catalog.services()
    assert services == {}  # default deny: a caller without a token sees no service
    _, services = consul_as(secure, "controlplane").catalog.services()
    assert {"inventory", "payment", "order"} <= set(services)


def nats_context(system: System, name: str | None) -> ssl.SSLContext:
    """TLS to the system's NATS, trusting our CA, presenting `name`'s certificate."""
    context = ssl.create_default_context(cafile=holder(system, "operator") / "ca.pem")
    if name is not None:
        mine = holder(system, name)
        context.load_cert_chain(mine / "cert.pem", mine / "key.pem")
    return context


async def nats_as(system: System, name: str | None) -> Any:
    """A NATS client connected as `name` (None: with no certificate); raises if refused."""

    async def quiet(error: Exception) -> None:
        del error  # refusals are what the tests assert: no need for nats-py to log them

    client = nats.aio.client.Client()
    await client.connect(
        system.nats.url,
        tls=nats_context(system, name),
        tls_hostname=tls.dns_name("nats"),
        allow_reconnect=False,
        connect_timeout=5,
        error_cb=quiet,
    )
    return client


CONFIRMED = "shop.order.v1.OrderConfirmed"


async def test_nats_refuses_a_forged_order_confirmed_from_any_other_identity(
    secure: System,
) -> None:
    """Inventory's certificate may publish inventory's events, not the order's."""
    inventory = await nats_as(secure, "inventory")
    try:
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await inventory.jetstream(timeout=2).publish(CONFIRMED, b"forged")
        # The server says why (nats-py reports it lower-cased).
        refusal = str(inventory.last_error)
    finally:
        await inventory.close()
    assert f'permissions violation for publish to "{CONFIRMED.lower()}"' in refusal, refusal
    operator = await nats_as(secure, "operator")
    try:
        last = await operator.jetstream().get_last_msg(STREAM, CONFIRMED)
        assert last.data != b"forged"  # the stream holds only the order service's
    finally:
        await operator.close()


@pytest.mark.parametrize(
    ("name", "refusal"),
    [(None, "client didn't provide a certificate"), ("intruder", 'authentication error - User ""')],
    ids=["no-certificate", "unmapped"],
)
async def test_nats_refuses_a_connection_without_a_mapped_certificate(
    secure: System, name: str | None, refusal: str
) -> None:
    """No certificate: no TLS handshake (under TLS 1.3 the client may see the refusal as
    a bad-certificate alert or as a reset). One from our CA naming no NATS user:
    Authorization Violation. The server's log says which."""
    with pytest.raises((nats.errors.Error, ssl.SSLError, ConnectionError)):
        client = await nats_as(secure, name)
        await client.close()
    log = secure.settings.workdir / "nats.log"
    wait_for(lambda: refusal in log.read_text(), f"NATS to log {refusal!r}")


def pg_login(system: System, role: str, **tls_options: Any) -> None:
    """A login as `role` with its password over TCP; raises psycopg's error if refused."""
    cluster = system.cluster
    assert cluster is not None
    password = cluster.password_file(role).read_text().strip()
    with psycopg.connect(
        host="127.0.0.1",
        port=cluster.port,
        user=role,
        dbname=role,
        password=password,
        connect_timeout=5,
        **tls_options,
    ) as conn:
        conn.execute("SELECT 1")


def pg_tls(system: System, certificate: str | None) -> dict[str, str]:
    """libpq's options for TLS that checks the server and presents `certificate`'s."""
    mine = holder(system, "operator")
    options = {"sslmode": "verify-full", "sslrootcert": str(mine / "ca.pem")}
    if certificate is not None:
        theirs = holder(system, certificate)
        options |= {"sslcert": str(theirs / "cert.pem"), "sslkey": str(theirs / "key.pem")}
    return options


def test_postgresql_admits_only_tls_logins_with_the_roles_own_certificate(secure: System) -> None:
    """Password and certificate both: no plaintext login, none without a certificate,
    none with another service's (its name must be the role's), and every service's
    pooled connection is on TLS."""
    refusals = {
        "plaintext": ({"sslmode": "disable"}, "no encryption"),
        "no certificate": (pg_tls(secure, None), "requires a valid client certificate"),
        # The server tells the client only that the login failed (its method's
        # message), and its log why: 'clientcert=verify-full ... CN mismatch'.
        "payment's certificate": (
            pg_tls(secure, "payment"),
            'password authentication failed for user "inventory"',
        ),
    }
    for how, (options, why) in refusals.items():
        with pytest.raises(psycopg.OperationalError) as refused:
            pg_login(secure, "inventory", **options)
        assert why in str(refused.value), (how, str(refused.value))
    assert secure.cluster is not None
    log = secure.cluster.log_path.read_text()
    assert 'certificate validation (clientcert=verify-full) failed for user "inventory"' in log
    pg_login(secure, "inventory", **pg_tls(secure, "inventory"))
    with secure.cluster.admin() as conn:
        rows = conn.execute(
            "SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
            " WHERE a.application_name LIKE 'shopmesh-%'"
        ).fetchall()
    assert {user for user, _ in rows} >= {"inventory", "payment", "order"}
    assert all(ssl_on for _, ssl_on in rows), rows
