"""Mutual TLS for the services' gRPC servers and clients, from a certificate directory.

A certificate directory holds what `shopmesh ca issue NAME --out DIR` writes: cert.pem
(the holder's certificate, then the CA's), key.pem (its key, owner-only) and ca.pem (the
CA: the one issuer a peer's certificate may come from).

Servers present cert.pem and require a client certificate issued by ca.pem. They are
built with grpcio's `dynamic_ssl_server_credentials`, which asks `CertificateReloader`
for the credentials at every TLS handshake; it answers "unchanged" after one `stat` per
file, and reads the files again only when they changed, so a renewed certificate is
served from the next connection on, without a restart. A connection keeps the
certificate it began with, so servers also close each connection after
MAX_CONNECTION_AGE_SECONDS (clients reconnect without failing a call: GOAWAY).

Clients cannot take new credentials into an open channel, so `ReloadingChannel` builds a
new channel when the files changed and closes the old one once its calls are done. A
Python gRPC client can check only a DNS name in the server's certificate (grpcio 1.85
compares `ssl_target_name_override` with DNS SANs, never with URI ones), so it dials with
the peer's `NAME.shopmesh.local`, the DNS SAN our CA writes beside the SPIFFE ID.
Servers read the caller's SPIFFE ID from the handshake (`peer_identity`).

Our own code: grpcio gives the credentials and the per-handshake hook; which files, when
to reload and when a pair is whole are ours.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

TRUST_DOMAIN = "shopmesh.local"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")
"""A holder's name (a service's, or `gateway` for Envoy): the last segment of its SPIFFE ID."""
MAX_CONNECTION_AGE_SECONDS = 300.0
"""How long a server keeps a connection (and so the certificate it was opened with)."""
CLIENT_RECHECK_SECONDS = 1.0
"""How often a client looks at its certificate files (a `stat` each) for a renewal."""
OLD_CHANNEL_GRACE_SECONDS = 30.0
"""How long the calls still running on a replaced channel may take to finish."""

S = TypeVar("S")


class TLSError(Exception):
    """A certificate directory that cannot be used: a file missing, unreadable or
    unparsable, or a key that is not the certificate's."""


def spiffe_id(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{name}"


def dns_name(name: str) -> str:
    return f"{name}.{TRUST_DOMAIN}"


@dataclass(frozen=True)
class Credentials:
    """One whole set of files as read: the key belongs to the first certificate."""

    key: bytes
    chain: bytes
    ca: bytes


@dataclass(frozen=True)
class CertificateFiles:
    """The files of one certificate directory."""

    directory: pathlib.Path

    @property
    def paths(self) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
        return (self.directory / "key.pem", self.directory / "cert.pem", self.directory / "ca.pem")

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """What changes when any file is replaced (a renewal renames new files in)."""
        try:
            return tuple((s.st_mtime_ns, s.st_ino) for s in (os.stat(p) for p in self.paths))
        except OSError as error:
            raise TLSError(f"cannot read the certificate in {self.directory}: {error}") from error

    def read(self) -> Credentials:
        """The three files, checked: TLSError unless the key is the certificate's."""
        try:
            key, chain, ca = (p.read_bytes() for p in self.paths)
            certificate = x509.load_pem_x509_certificate(chain)
            x509.load_pem_x509_certificates(ca)
            private = serialization.load_pem_private_key(key, None)
        except (OSError, ValueError) as error:
            raise TLSError(f"cannot use the certificate in {self.directory}: {error}") from error
        # Between the two renames of a renewal the key can be newer than the certificate.
        if private.public_key() != certificate.public_key():
            raise TLSError(f"{self.directory}: key.pem is not cert.pem's key (mid-renewal?)")
        return Credentials(key, chain, ca)


class CertificateReloader:
    """The fetcher of `dynamic_ssl_server_credentials`: called by grpc's core threads at
    every handshake; returns new credentials when the files changed, else None (grpc
    keeps what it has). A half-written renewal is skipped until it is whole."""

    def __init__(self, files: CertificateFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._stamp = files.stamp()
        self.current = files.read()

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.current.key, self.current.chain)], root_certificates=self.current.ca
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                stamp = self._files.stamp()
                if stamp == self._stamp:
                    return None
                self.current = self._files.read()
            except TLSError as error:
                log.warning("keeping the certificate in use: %s", error)
                return None
            self._stamp = stamp
        log.info("serving the renewed certificate from %s", self._files.directory)
        return self.configuration()


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Mutual TLS: present `files`' certificate, admit only clients with one from its CA."""
    reloader = CertificateReloader(files)
    return grpc.dynamic_ssl_server_credentials(
        reloader.configuration(), reloader, require_client_authentication=True
    )


SERVER_OPTIONS = (
    ("grpc.max_connection_age_ms", int(MAX_CONNECTION_AGE_SECONDS * 1000)),
    ("grpc.max_connection_age_grace_ms", int(OLD_CHANNEL_GRACE_SECONDS * 1000)),
)
"""Server options under mutual TLS: see MAX_CONNECTION_AGE_SECONDS."""


def channel_credentials(credentials: Credentials) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(credentials.ca, credentials.key, credentials.chain)


def secure_channel(target: str, credentials: Credentials, peer_name: str) -> grpc.aio.Channel:
    """A channel to `target` that accepts only a server certificate naming `peer_name`."""
    return grpc.aio.secure_channel(
        target,
        channel_credentials(credentials),
        options=(("grpc.ssl_target_name_override", dns_name(peer_name)),),
    )


class ReloadingChannel(Generic[S]):
    """A client's channel to one target, rebuilt with the renewed certificate when its
    files change (looked at every CLIENT_RECHECK_SECONDS at most); plaintext when `files`
    is None. `stub()` is the stub for the current channel: ask for it at every call."""

    def __init__(
        self,
        target: str,
        make_stub: Callable[[grpc.aio.Channel], S],
        files: CertificateFiles | None,
        peer_name: str,
    ) -> None:
        self._target, self._make_stub = target, make_stub
        self._files, self._peer_name = files, peer_name
        self._retiring: set[asyncio.Task[None]] = set()
        self._stamp = files.stamp() if files is not None else ()
        self._checked = time.monotonic()
        self._channel = self._open(files.read() if files is not None else None)
        self._stub = make_stub(self._channel)

    def _open(self, credentials: Credentials | None) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(self._target)
        return secure_channel(self._target, credentials, self._peer_name)

    def stub(self) -> S:
        if self._files is not None and time.monotonic() - self._checked >= CLIENT_RECHECK_SECONDS:
            self._checked = time.monotonic()
            self._renew_if_changed(self._files)
        return self._stub

    def _renew_if_changed(self, files: CertificateFiles) -> None:
        try:
            stamp = files.stamp()
            if stamp == self._stamp:
                return
            credentials = files.read()
        except TLSError as error:
            log.warning("calling %s with the certificate in use: %s", self._target, error)
            return
        self._stamp = stamp
        old, self._channel = self._channel, self._open(credentials)
        self._stub = self._make_stub(self._channel)
        log.info("calling %s with the renewed certificate from %s", self._target, files.directory)
        task = asyncio.get_running_loop().create_task(old.close(OLD_CHANNEL_GRACE_SECONDS))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await self._channel.close()


def peer_identity(context: grpc.aio.ServicerContext) -> tuple[bool, str | None]:
    """Whether the call came over TLS and, if so, the caller's SPIFFE ID, proven by its
    certificate (None if its certificate names none)."""
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return False, None
    found: list[bytes] = list(auth.get("peer_spiffe_id") or ())
    return True, found[0].decode() if len(found) == 1 else None
