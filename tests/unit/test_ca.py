"""The local CA (shopmesh/ca.py): the certificates it issues carry the holder's SPIFFE ID,
and OpenSSL (Python's ssl, in this process over a socket pair) accepts them for mutual
TLS and refuses what another CA issued or what has expired."""

from __future__ import annotations

import datetime
import pathlib
import socket
import ssl
import stat
import threading

import pytest

from shopmesh import ca, cli


def server_context(holder: ca.Issued, trusted: pathlib.Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED  # a client certificate is required
    context.load_verify_locations(trusted)
    context.load_cert_chain(holder.cert_path, holder.key_path)
    return context


def client_context(holder: ca.Issued, trusted: pathlib.Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the identity is the SAN's SPIFFE ID, read below
    context.load_verify_locations(trusted)
    context.load_cert_chain(holder.cert_path, holder.key_path)
    return context


def peer_identity(tls: ssl.SSLSocket) -> str | None:
    """The SPIFFE ID in the certificate the peer presented (it had to present one)."""
    peer = tls.getpeercert(binary_form=True)
    assert peer is not None
    return ca.identity_of(ssl.DER_cert_to_PEM_cert(peer).encode())


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[str | None, str | None, BaseException | None]:
    """Both ends' view after a TLS handshake: the identity the server saw in the client's
    certificate, the one the client saw in the server's, and the server's error if any."""
    left, right = socket.socketpair()
    left.settimeout(10)
    right.settimeout(10)
    seen: dict[str, str | None] = {}
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                seen["server"] = peer_identity(tls)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            failure.append(error)
            left.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right) as tls:
            seen["client"] = peer_identity(tls)
            tls.recv(2)  # TLS 1.3: the server's verdict on our certificate comes now
    except (ssl.SSLError, OSError):
        pass
    finally:
        right.close()
        thread.join(10)
    return seen.get("server"), seen.get("client"), failure[0] if failure else None


def test_a_service_certificate_names_its_spiffe_id_and_its_key_is_owner_only(
    tmp_path: pathlib.Path,
) -> None:
    authority = ca.ensure_ca(tmp_path / "ca")
    issued = ca.issue(authority, "payment", tmp_path / "payment")
    assert issued.spiffe_id == "spiffe://shopmesh.local/payment"
    assert ca.identity_of(issued.cert_path.read_bytes()) == issued.spiffe_id
    assert stat.S_IMODE(issued.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    lifetime = issued.not_after - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=59) < lifetime <= datetime.timedelta(hours=1)


def test_two_holders_of_the_ca_authenticate_each_other(tmp_path: pathlib.Path) -> None:
    authority = ca.ensure_ca(tmp_path / "ca")
    order = ca.issue(authority, "order", tmp_path / "order")
    payment = ca.issue(authority, "payment", tmp_path / "payment")
    seen_by_server, seen_by_client, error = handshake(
        server_context(payment, authority.cert_path), client_context(order, authority.cert_path)
    )
    assert error is None
    assert (seen_by_server, seen_by_client) == (order.spiffe_id, payment.spiffe_id)


def test_a_client_certificate_of_another_ca_is_refused(tmp_path: pathlib.Path) -> None:
    ours, theirs = ca.ensure_ca(tmp_path / "ours"), ca.ensure_ca(tmp_path / "theirs")
    payment = ca.issue(ours, "payment", tmp_path / "payment")
    impostor = ca.issue(theirs, "order", tmp_path / "impostor")  # the right name, wrong CA
    seen_by_server, _, error = handshake(
        server_context(payment, ours.cert_path), client_context(impostor, ours.cert_path)
    )
    assert isinstance(error, ssl.SSLError) and "certificate verify failed" in str(error)
    assert seen_by_server is None


def test_an_expired_client_certificate_is_refused(tmp_path: pathlib.Path) -> None:
    authority = ca.ensure_ca(tmp_path / "ca")
    payment = ca.issue(authority, "payment", tmp_path / "payment")
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    stale = ca.issue(authority, "order", tmp_path / "order", ttl_seconds=60, now=long_ago)
    _, _, error = handshake(
        server_context(payment, authority.cert_path), client_context(stale, authority.cert_path)
    )
    assert isinstance(error, ssl.SSLError) and "certificate has expired" in str(error)


def test_issuing_again_renews_and_the_ca_is_made_once_unless_forced(
    tmp_path: pathlib.Path,
) -> None:
    authority = ca.ensure_ca(tmp_path / "ca")
    first = ca.issue(authority, "order", tmp_path / "order").cert_path.read_bytes()
    assert ca.issue(authority, "order", tmp_path / "order").cert_path.read_bytes() != first
    assert ca.ensure_ca(tmp_path / "ca").certificate == authority.certificate
    assert ca.ensure_ca(tmp_path / "ca", force=True).certificate != authority.certificate


@pytest.mark.parametrize(
    ("name", "ttl", "said"),
    [
        ("Order", 3600, "must match"),
        ("order/../admin", 3600, "must match"),
        ("order", 10, "ttl_seconds must be 60.."),
        ("order", 30 * 86400, "ttl_seconds must be 60.."),
    ],
)
def test_the_ca_refuses_a_bad_name_or_lifetime(
    tmp_path: pathlib.Path, name: str, ttl: int, said: str
) -> None:
    authority = ca.ensure_ca(tmp_path / "ca")
    with pytest.raises(ca.CAError, match=said):
        ca.issue(authority, name, tmp_path / "out", ttl_seconds=ttl)


def test_loading_a_missing_ca_says_how_to_make_one(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ca.CAError, match="run `shopmesh ca init`"):
        ca.load_ca(tmp_path / "none")


def test_shopmesh_ca_init_then_issue_prints_the_identity_and_refuses_a_bad_name(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ("--ca-dir", str(tmp_path / "ca"))
    assert cli.main(["ca", "init", *where]) == 0
    assert cli.main(["ca", "issue", "inventory", "--out", str(tmp_path / "inv"), *where]) == 0
    printed = capsys.readouterr().out
    assert "spiffe://shopmesh.local/inventory: " in printed and "valid until" in printed
    assert cli.main(["ca", "issue", "Inventory", "--out", str(tmp_path / "x"), *where]) == 2
    assert "a holder's name must match" in capsys.readouterr().err
    missing = ("--ca-dir", str(tmp_path / "none"))
    assert cli.main(["ca", "issue", "order", "--out", str(tmp_path / "y"), *missing]) == 2
    assert "run `shopmesh ca init`" in capsys.readouterr().err


def test_a_client_that_checks_host_names_accepts_only_the_holders_dns_name(
    tmp_path: pathlib.Path,
) -> None:
    """What grpcio's Python channels can check (`ssl_target_name_override`): the DNS SAN."""
    authority = ca.ensure_ca(tmp_path / "ca")
    order = ca.issue(authority, "order", tmp_path / "order")
    payment = ca.issue(authority, "payment", tmp_path / "payment")
    outcomes = []
    for expected in ("payment", "order"):
        client = client_context(order, authority.cert_path)
        client.check_hostname = True
        server = server_context(payment, authority.cert_path)
        left, right = socket.socketpair()
        thread = threading.Thread(target=accept, args=(server, left))
        thread.start()
        try:
            with client.wrap_socket(right, server_hostname=ca.dns_name(expected)):
                outcomes.append("ok")
        except ssl.SSLCertVerificationError as error:
            outcomes.append(error.verify_message)
        finally:
            right.close()
            thread.join(10)
    assert outcomes[0] == "ok"
    assert "Hostname mismatch" in outcomes[1]


def accept(server: ssl.SSLContext, sock: socket.socket) -> None:
    sock.settimeout(10)
    try:
        with server.wrap_socket(sock, server_side=True):
            pass
    except (ssl.SSLError, OSError):
        sock.close()
