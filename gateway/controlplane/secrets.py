"""Envoy's certificate over SDS: the certificate directory it serves and calls with, as
two Secrets, pushed again whenever the directory is renewed.

CERTIFICATE is Envoy's own certificate and key (it presents it to every upstream and on
the internal listener); TRUSTED_CA is the CA it checks every peer's certificate against.
The directory is the one `shopmesh ca issue gateway --out DIR` writes (services/common/
tls.py reads it the same way, and skips a renewal until its key and certificate match).
Envoy keeps a listener or cluster that names a secret not yet sent waiting (its
connections fail) rather than falling back to plaintext.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from services.common.tls import CertificateFiles, Credentials, TLSError

log = logging.getLogger(__name__)

CERTIFICATE = "shopmesh-certificate"
TRUSTED_CA = "shopmesh-ca"
RECHECK_SECONDS = 1.0
"""How often the directory is looked at (a `stat` per file) for a renewal."""


def secrets_of(credentials: Credentials) -> dict[str, secret_pb2.Secret]:
    """The two Secrets, by name, for one certificate directory's contents."""
    return {
        CERTIFICATE: secret_pb2.Secret(
            name=CERTIFICATE,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=credentials.chain),
                private_key=base_pb2.DataSource(inline_bytes=credentials.key),
            ),
        ),
        TRUSTED_CA: secret_pb2.Secret(
            name=TRUSTED_CA,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=credentials.ca)
            ),
        ),
    }


async def watch(
    files: CertificateFiles, publish: Callable[[str, secret_pb2.Secret], object]
) -> None:
    """Publishes the directory's secrets now and after every renewal, until cancelled. A
    directory that cannot be read (or a renewal half done) keeps what was sent last."""
    seen: object = None
    while True:
        try:
            stamp = files.stamp()
            if stamp != seen:
                for name, secret in secrets_of(files.read()).items():
                    publish(name, secret)
                log.info("Envoy's certificate from %s published over SDS", files.directory)
                seen = stamp
        except TLSError as error:
            log.warning("Envoy's certificate stays as sent: %s", error)
        await asyncio.sleep(RECHECK_SECONDS)
