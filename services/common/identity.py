"""Who is calling: the identity headers the gateway sets from a verified JWT, and who
may assert them.

Envoy removes every x-shop-* header a client sends and sets these from the verified
token's `sub` and `scope` claims (gateway/envoy.yaml, jwt_authn's claim_to_headers). The
order service passes the user header on to inventory and payment, for the order's owner.

Who may set them depends on the port's transport:

- plaintext (the laptop default; services listen on loopback only): every caller that
  can connect is trusted, so the headers are believed as they come.
- mutual TLS: the caller's certificate names it (services/common/tls.py). The gateway
  (`spiffe://shopmesh.local/gateway`) may assert both headers on what its public
  listener forwards; what its internal listener forwards carries the caller's own
  identity in x-forwarded-client-cert (Envoy sets it from the caller's certificate and
  drops any a caller sends), and is judged as that caller's. The order service may
  assert the user (the saga's calls, for the order's owner), never scopes. Nobody else
  may assert either: a call that tries is refused, PERMISSION_DENIED
  IDENTITY_NOT_TRUSTED, rather than served as nobody's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc

from services.common import tls
from services.common.errors import ErrorKind, ServiceError

USER_HEADER = "x-shop-user"
SCOPES_HEADER = "x-shop-scopes"
FORWARDED_CERT_HEADER = "x-forwarded-client-cert"
GATEWAY = tls.spiffe_id("gateway")
ORDER = tls.spiffe_id("order")
# Who may assert which header, under mutual TLS: the public listener's forwards (the
# gateway with no forwarded certificate), and the order service however it arrives.
MAY_ASSERT_USER = frozenset({GATEWAY, ORDER})
MAY_ASSERT_SCOPES = frozenset({GATEWAY})
ADMIN_SCOPE = "shop.admin"
MAX_USER_ID_LENGTH = 128
# The user-id alphabet, decided once: ASCII letters, digits and `. _ @ + -`, 1 to 128 of
# them. No spaces, separators, control or non-ASCII characters: a user id travels as a gRPC
# header from the order saga to inventory and payment, and gRPC refuses header values
# outside printable ASCII (a token for `zoë` used to leave its orders PENDING for ever).
# Envoy refuses any other token subject with the same pattern (gateway/envoy.yaml), and
# `shopmesh token` will not sign one.
USER_ID_PATTERN = rf"[A-Za-z0-9._@+-]{{1,{MAX_USER_ID_LENGTH}}}"
USER_ID_RULE = f"1 to {MAX_USER_ID_LENGTH} of A-Z a-z 0-9 . _ @ + -"
_USER_ID = re.compile(USER_ID_PATTERN)


@dataclass(frozen=True)
class Caller:
    """The verified user behind a request and the scopes their token grants."""

    user_id: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes


def caller(context: grpc.aio.ServicerContext) -> Caller:
    """The caller of this request; UNAUTHENTICATED if the gateway named no user,
    PERMISSION_DENIED if a header comes from an identity that may not assert it."""
    user_id, scopes, forwarded = "", "", ""
    for key, value in context.invocation_metadata() or ():
        if key == USER_HEADER and isinstance(value, str):
            user_id = value
        elif key == SCOPES_HEADER and isinstance(value, str):
            scopes = value
        elif key == FORWARDED_CERT_HEADER and isinstance(value, str):
            forwarded = value
    secure, peer = tls.peer_identity(context)
    if secure:
        who = asserted_by(peer, forwarded)
        for header, value, allowed in (
            (USER_HEADER, user_id, MAY_ASSERT_USER),
            (SCOPES_HEADER, scopes, MAY_ASSERT_SCOPES),
        ):
            if value and who not in allowed:
                raise ServiceError(
                    ErrorKind.PERMISSION_DENIED,
                    "IDENTITY_NOT_TRUSTED",
                    f"{who or 'a caller without a SPIFFE ID'} may not assert {header}",
                )
    if not user_id:
        raise ServiceError(
            ErrorKind.UNAUTHENTICATED, "UNAUTHENTICATED", "the request carries no valid user"
        )
    if not is_valid_user_id(user_id):
        raise ServiceError(
            ErrorKind.UNAUTHENTICATED,
            "INVALID_USER_ID",
            f"the caller's user id is not {USER_ID_RULE}",
        )
    return Caller(user_id, frozenset(scopes.split()))


def asserted_by(peer: str | None, forwarded: str) -> str | None:
    """Whose word the identity headers are: the peer's, or, when the peer is the gateway
    forwarding from its internal listener, the SPIFFE ID of the certificate it forwards
    (x-forwarded-client-cert's URI; Envoy's SANITIZE_SET replaces any the caller sent).
    A forwarded header from any other peer is the peer's own claim, and ignored."""
    if peer != GATEWAY or not forwarded:
        return peer
    # The last element is the hop into this service: `By=...;Hash=...;URI=spiffe://...`.
    for field in forwarded.rsplit(",", maxsplit=1)[-1].split(";"):
        key, _, value = field.strip().partition("=")
        if key.lower() == "uri":
            return value.strip('"')
    return None  # the gateway forwarded a caller without a SPIFFE ID


def is_valid_user_id(user_id: str) -> bool:
    return _USER_ID.fullmatch(user_id) is not None


def require_admin(who: Caller) -> None:
    if not who.is_admin:
        raise ServiceError(
            ErrorKind.PERMISSION_DENIED,
            "ADMIN_SCOPE_REQUIRED",
            f"this method needs the {ADMIN_SCOPE} scope",
        )


def outbound_metadata(user_id: str) -> tuple[tuple[str, str], ...]:
    """Metadata that makes a downstream call on behalf of `user_id`."""
    return ((USER_HEADER, user_id),)
