"""Who is calling: the identity headers the gateway sets from a verified JWT.

Services trust these headers because only Envoy can reach them with one: Envoy removes
every x-shop-* header a client sends and sets these from the verified token's `sub` and
`scope` claims (gateway/envoy.yaml, jwt_authn's claim_to_headers). The order service
passes the user header on to inventory and payment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc

from services.common.errors import ErrorKind, ServiceError

USER_HEADER = "x-shop-user"
SCOPES_HEADER = "x-shop-scopes"
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
    """The caller of this request; UNAUTHENTICATED if the gateway named no user."""
    user_id, scopes = "", ""
    for key, value in context.invocation_metadata() or ():
        if key == USER_HEADER and isinstance(value, str):
            user_id = value
        elif key == SCOPES_HEADER and isinstance(value, str):
            scopes = value
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
