"""Mutual TLS on a service's own port (services/common/tls.py, peers.py, identity.py):
inventory served in this process with a certificate from a CA of the test's, called by
grpc clients holding our certificates, another CA's, or none; and every certificate
renewed under a steady stream of calls, none of which may fail."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import tls
from services.common.identity import FORWARDED_CERT_HEADER, SCOPES_HEADER, USER_HEADER
from services.common.server import build_server, set_serving
from services.inventory.config import InventoryConfig
from services.inventory.service import create as create_inventory
from shop.inventory.v1 import inventory_pb2
from shop.inventory.v1 import inventory_service_pb2 as rpc
from shop.inventory.v1.inventory_service_pb2_grpc import InventoryServiceStub
from shopmesh import ca
from tests.helpers import TLSDial, eventually, rejected

NAMES = ("gateway", "order", "reporting", "inventory", "payment")


@pytest.fixture
def certs(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    """A certificate directory per name from the test's CA, and `other-ca/gateway` from
    another CA: the same name, the wrong issuer."""
    authority = ca.ensure_ca(tmp_path / "ca")
    found = {name: ca.issue(authority, name, tmp_path / name).cert_path.parent for name in NAMES}
    stranger = ca.ensure_ca(tmp_path / "other-ca")
    found["other-ca/gateway"] = ca.issue(stranger, "gateway", tmp_path / "other").cert_path.parent
    return found


class PeerCertificates(grpc.aio.ServerInterceptor):
    """Records the client certificate each call arrived with (its first PEM)."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        behavior = handler.unary_unary

        async def recording(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.seen.extend(context.auth_context().get("x509_pem_cert", []))
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            recording, handler.request_deserializer, handler.response_serializer
        )


@contextlib.asynccontextmanager
async def inventory_on_tls(
    tmp_path: pathlib.Path,
    seed_file: pathlib.Path,
    tls_dir: pathlib.Path,
    recorder: PeerCertificates | None = None,
) -> AsyncIterator[str]:
    """Inventory serving mutual TLS with `tls_dir`'s certificate; yields its target."""
    config = InventoryConfig(db_path=tmp_path / "inventory.db", seed_file=seed_file)
    service = await create_inventory(config)
    if recorder is not None:
        service.interceptors = (recorder,)  # type: ignore[assignment]
    server, port, health = await build_server(service, tls_dir=tls_dir)
    await server.start()
    await service.start()
    await set_serving(health, service)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await service.stop()


def channel(target: str, holder: pathlib.Path | None, ca_dir: pathlib.Path, peer: str) -> Any:
    """A channel to `target` trusting `ca_dir`'s CA, presenting `holder`'s certificate
    (None: no certificate), accepting only a server naming `peer`."""
    return TLSDial(holder, ca_dir, peer).aio_channel(target)


async def product(stub: InventoryServiceStub, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    return await stub.GetProduct(rpc.GetProductRequest(sku="SKU-TEA"), timeout=5, metadata=metadata)


async def test_the_gateway_is_served_and_may_assert_both_identity_headers(
    tmp_path: pathlib.Path, seed_file: pathlib.Path, certs: dict[str, pathlib.Path]
) -> None:
    async with (
        inventory_on_tls(tmp_path, seed_file, certs["inventory"]) as target,
        channel(target, certs["gateway"], certs["gateway"], "inventory") as ch,
    ):
        stub = InventoryServiceStub(ch)
        assert (await product(stub)).product.sku == "SKU-TEA"
        admin = ((USER_HEADER, "ops"), (SCOPES_HEADER, "shop.admin"))
        restocked = await stub.RestockProduct(
            rpc.RestockProductRequest(sku="SKU-TEA", quantity=1, request_id="r1"),
            timeout=5,
            metadata=admin,
        )
        assert restocked.product.sku == "SKU-TEA"


@pytest.mark.parametrize("holder", [None, "other-ca/gateway"], ids=["no-certificate", "other-ca"])
async def test_a_caller_without_our_certificate_is_refused_at_the_handshake(
    tmp_path: pathlib.Path,
    seed_file: pathlib.Path,
    certs: dict[str, pathlib.Path],
    holder: str | None,
) -> None:
    async with inventory_on_tls(tmp_path, seed_file, certs["inventory"]) as target:
        mine = certs[holder] if holder else None
        async with channel(target, mine, certs["gateway"], "inventory") as ch:
            error = await rejected(product(InventoryServiceStub(ch)))
            assert error.code == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(target) as plain:  # plaintext to a TLS port
            error = await rejected(product(InventoryServiceStub(plain)))
            assert error.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("served_with", "trusting"),
    [("payment", "gateway"), ("other-ca/gateway", "gateway")],
    ids=["our-ca-another-name", "another-ca"],
)
async def test_a_client_refuses_a_server_that_is_not_the_one_it_dialled(
    tmp_path: pathlib.Path,
    seed_file: pathlib.Path,
    certs: dict[str, pathlib.Path],
    served_with: str,
    trusting: str,
) -> None:
    """The saga's client (ReloadingChannel) dials `inventory`: a server whose certificate
    names payment, or comes from another CA, gets no call."""
    async with inventory_on_tls(tmp_path, seed_file, certs[served_with]) as target:
        client = tls.ReloadingChannel(
            target, InventoryServiceStub, tls.CertificateFiles(certs[trusting]), "inventory"
        )
        try:
            error = await rejected(product(client.stub()))
            assert error.code == grpc.StatusCode.UNAVAILABLE
        finally:
            await client.close()


async def test_a_certified_caller_that_is_not_allowed_gets_only_the_health_service(
    tmp_path: pathlib.Path, seed_file: pathlib.Path, certs: dict[str, pathlib.Path]
) -> None:
    async with (
        inventory_on_tls(tmp_path, seed_file, certs["inventory"]) as target,
        channel(target, certs["reporting"], certs["gateway"], "inventory") as ch,
    ):
        error = await rejected(product(InventoryServiceStub(ch)))
        assert (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "PEER_NOT_ALLOWED",
        )
        assert "spiffe://shopmesh.local/reporting" in error.message
        answer = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def forwarded(name: str) -> tuple[str, str]:
    """What Envoy's internal listener adds for a caller holding `name`'s certificate."""
    return (
        FORWARDED_CERT_HEADER,
        f"By=spiffe://shopmesh.local/inventory;URI={tls.spiffe_id(name)}",
    )


@pytest.mark.parametrize(
    ("headers", "outcome"),
    [
        # the saga's call through the internal listener: the order's owner
        ((forwarded("order"), (USER_HEADER, "alice")), "served"),
        # ... but the order service may not grant scopes
        ((forwarded("order"), (USER_HEADER, "ops"), (SCOPES_HEADER, "shop.admin")), SCOPES_HEADER),
        # nor may reporting (or anyone else) name a user through the gateway
        ((forwarded("reporting"), (USER_HEADER, "alice")), USER_HEADER),
        # a forwarded caller without a SPIFFE ID is nobody's word
        (((FORWARDED_CERT_HEADER, "Hash=abc"), (USER_HEADER, "alice")), USER_HEADER),
    ],
    ids=["order-names-the-owner", "order-grants-scopes", "reporting-names-a-user", "no-uri"],
)
async def test_identity_headers_are_believed_only_from_who_may_assert_them(
    tmp_path: pathlib.Path,
    seed_file: pathlib.Path,
    certs: dict[str, pathlib.Path],
    headers: tuple[tuple[str, str], ...],
    outcome: str,
) -> None:
    async with (
        inventory_on_tls(tmp_path, seed_file, certs["inventory"]) as target,
        channel(target, certs["gateway"], certs["gateway"], "inventory") as ch,
    ):
        stub = InventoryServiceStub(ch)
        request = rpc.ReserveStockRequest(
            order_id="o-1", items=[inventory_pb2.ReservationItem(sku="SKU-TEA", quantity=1)]
        )
        call = stub.ReserveStock(request, timeout=5, metadata=headers)
        if outcome == "served":
            assert (await call).reservation.order_id == "o-1"
            return
        error = await rejected(call)
        assert (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "IDENTITY_NOT_TRUSTED",
        )
        assert f"may not assert {outcome}" in error.message


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


async def shows(target: str, client: pathlib.Path, serial: int) -> bool:
    """Whether a new connection to `target` is shown the certificate `serial`."""
    context = ssl.create_default_context(cafile=client / "ca.pem")
    context.check_hostname = False
    context.load_cert_chain(client / "cert.pem", client / "key.pem")
    context.set_alpn_protocols(["h2"])
    host, port = target.rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return x509.load_der_x509_certificate(der).serial_number == serial


async def test_every_certificate_is_renewed_under_traffic_without_a_failed_call(
    tmp_path: pathlib.Path, seed_file: pathlib.Path, certs: dict[str, pathlib.Path]
) -> None:
    authority = ca.load_ca(tmp_path / "ca")
    recorder = PeerCertificates()
    async with inventory_on_tls(tmp_path, seed_file, certs["inventory"], recorder) as target:
        client = tls.ReloadingChannel(
            target, InventoryServiceStub, tls.CertificateFiles(certs["gateway"]), "inventory"
        )
        calls, failures = 0, []
        stop = asyncio.Event()

        async def traffic() -> None:
            nonlocal calls
            while not stop.is_set():
                try:
                    await product(client.stub())
                except grpc.aio.AioRpcError as error:
                    failures.append(error)
                calls += 1

        workers = [asyncio.create_task(traffic()) for _ in range(4)]
        try:
            for _ in range(2):  # twice: a renewal after a renewal works too
                server_new = ca.issue(authority, "inventory", certs["inventory"])
                client_new = ca.issue(authority, "gateway", certs["gateway"])
                want_server = serial_of(server_new.cert_path.read_bytes())
                want_client = serial_of(client_new.cert_path.read_bytes())
                await eventually(
                    lambda: shows(target, certs["gateway"], want_server),  # noqa: B023
                    "the server to show its renewed certificate",
                )
                await eventually(
                    lambda: recorder.seen and serial_of(recorder.seen[-1]) == want_client,  # noqa: B023
                    "a call with the client's renewed certificate",
                )
        finally:
            stop.set()
            await asyncio.gather(*workers)
            await client.close()
    assert calls > 100
    assert failures == []
