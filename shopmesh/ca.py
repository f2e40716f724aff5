"""The local certificate authority: service identities for mutual TLS.

A CA key pair under var/ca/ (the key owner-only), and short-lived certificates it issues
to each service instance and each Envoy, naming the holder by a SPIFFE ID in a URI SAN
(`spiffe://shopmesh.local/<name>`), and by `<name>.shopmesh.local` for the clients that
check only DNS names (`dns_name`). Each certificate is for server and client use alike:
a service serves with it and calls with it. Files are written whole and then renamed
into place, so a reader picking up a renewed certificate never sees half of one.

For development and the test hosts only: a real deployment would hold the CA key in a
KMS or Vault and issue through SPIRE or Vault's PKI engine (docs/architecture.md). The
cryptography library builds and signs; the choices here (ECDSA P-256, lifetimes, the
SAN) are ours.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common import tls
from shopmesh.tools import WORKDIR, write_private

TRUST_DOMAIN = tls.TRUST_DOMAIN
DEFAULT_CA_DIR = WORKDIR / "ca"
CA_TTL_SECONDS = 365 * 86400
"""The CA's own lifetime: a development CA, made again by `shopmesh ca init --force`."""
DEFAULT_TTL_SECONDS = 3600
"""A leaf certificate's lifetime: short, so that rotation is routine, not an event."""
MAX_TTL_SECONDS = 7 * 86400
NAME_PATTERN = tls.NAME_PATTERN
BACKDATE_SECONDS = 60
"""notBefore this far in the past: a peer whose clock is a little behind still accepts."""


class CAError(Exception):
    """A request the CA refuses (a bad name or lifetime), or a CA that is not there."""


@dataclass(frozen=True)
class CA:
    """A CA as loaded: its certificate and key, and where they are."""

    directory: pathlib.Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> pathlib.Path:
        return self.directory / "ca.pem"


@dataclass(frozen=True)
class Issued:
    """A leaf certificate as written: its files and its identity."""

    spiffe_id: str
    cert_path: pathlib.Path
    key_path: pathlib.Path
    not_after: datetime.datetime


def spiffe_id(name: str) -> str:
    """The SPIFFE ID of the holder `name`."""
    if not NAME_PATTERN.fullmatch(name):
        raise CAError(f"a holder's name must match {NAME_PATTERN.pattern}, got {name!r}")
    return tls.spiffe_id(name)


def dns_name(name: str) -> str:
    """The DNS name a holder's certificate names besides its SPIFFE ID: for the clients
    that can check only a host name (grpcio's Python channels, whose
    `ssl_target_name_override` compares DNS SANs, never URI ones; nats-py; Consul), which
    dial with it as the name to verify. Never resolved: it only names the identity."""
    spiffe_id(name)  # the same rule for the name
    return tls.dns_name(name)


def ensure_ca(directory: pathlib.Path = DEFAULT_CA_DIR, *, force: bool = False) -> CA:
    """The CA in `directory`, made first if it is not there (or `force`: a new one, and
    every certificate of the old one stops being trusted)."""
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    if force or not key_path.exists() or not cert_path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shopmesh development CA")])
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=BACKDATE_SECONDS))
            .not_valid_after(now + datetime.timedelta(seconds=CA_TTL_SECONDS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            # No name constraints (URI ones would bind it to our trust domain): whether
            # Envoy's BoringSSL honours URI constraints is unchecked; peers check the SAN.
            .sign(key, hashes.SHA256())
        )
        write_private(key_path, _key_pem(key))
        _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    return load_ca(directory)


def load_ca(directory: pathlib.Path = DEFAULT_CA_DIR) -> CA:
    """The CA in `directory`; CAError if there is none (run `shopmesh ca init`)."""
    try:
        certificate = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except FileNotFoundError as error:
        raise CAError(f"no CA in {directory}: run `shopmesh ca init`") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{directory / 'ca.key'} is not an EC key")
    return CA(directory, certificate, key)


def issue(
    ca: CA,
    name: str,
    out: pathlib.Path,
    *,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: datetime.datetime | None = None,
    addresses: Sequence[str] = (),
) -> Issued:
    """Issues the holder `name` a new key and certificate for `ttl_seconds`, written to
    `out`/cert.pem (the certificate, then the CA's: the chain a peer needs),
    `out`/key.pem (owner-only) and `out`/ca.pem (whom to trust): a certificate directory
    (services/common/tls.py). Issuing again replaces them: a renewal. `addresses`: IP
    addresses the certificate names too, for a server its clients dial by address and
    verify as a host (Consul's HTTPS API, whose clients are HTTP libraries)."""
    identity = spiffe_id(name)
    if not 60 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise CAError(f"ttl_seconds must be 60..{MAX_TTL_SECONDS}, got {ttl_seconds}")
    now = now or _now()
    not_after = min(
        now + datetime.timedelta(seconds=ttl_seconds), ca.certificate.not_valid_after_utc
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        # The subject repeats the name for people reading logs; peers check the SAN.
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=BACKDATE_SECONDS))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(identity),
                    x509.DNSName(dns_name(name)),
                    *(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses),
                ]
            ),
            critical=True,  # the subject is not the identity: a verifier must read this
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    _write(out / "ca.pem", ca.certificate.public_bytes(serialization.Encoding.PEM))
    # The key first: a reader that sees the new certificate finds its key already there.
    write_private(key_path, _key_pem(key))
    chain = certificate.public_bytes(serialization.Encoding.PEM) + ca.certificate.public_bytes(
        serialization.Encoding.PEM
    )
    _write(cert_path, chain)
    return Issued(identity, cert_path, key_path, not_after)


def identity_of(pem: bytes) -> str | None:
    """The SPIFFE ID a certificate (the first in `pem`) names, None if it names none."""
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
    found = [u for u in uris if u.startswith(f"spiffe://{TRUST_DOMAIN}/")]
    return found[0] if len(found) == 1 else None


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures only (EC keys sign the TLS handshake); the CA's also sign certificates."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: pathlib.Path, data: bytes) -> None:
    staged = path.with_suffix(path.suffix + ".tmp")
    staged.write_bytes(data)
    staged.replace(path)
