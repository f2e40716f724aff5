"""Development JWTs: an RS256 key pair under var/jwt/, the JWKS Envoy reads, and tokens.

For development only: a real deployment points Envoy's jwt_authn at its identity
provider's JWKS (see docs/api.md, "Plugging in a real identity provider") and never holds a
private key. PyJWT signs; cryptography makes the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.common.identity import USER_ID_RULE, is_valid_user_id
from shopmesh.tools import WORKDIR

ISSUER = "shopmesh-dev"
AUDIENCE = "shopmesh"
DEFAULT_TTL_SECONDS = 3600
# Envoy refuses tokens that live longer than this (jwt_authn max_lifetime).
MAX_TTL_SECONDS = 86400
DEFAULT_KEYS_DIR = WORKDIR / "jwt"
"""The dev keys every shopmesh command uses unless told otherwise."""


@dataclass(frozen=True)
class Keys:
    private_pem: pathlib.Path
    jwks: pathlib.Path
    kid: str


def ensure_keys(directory: pathlib.Path = DEFAULT_KEYS_DIR) -> Keys:
    """Creates the key pair and JWKS once; later calls only read them."""
    private_pem, jwks_path = directory / "private.pem", directory / "jwks.json"
    if not private_pem.exists():
        directory.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Created with owner-only permissions: no moment when others could read it.
        fd = os.open(private_pem.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        private_pem.with_suffix(".tmp").replace(private_pem)
        jwks_path.unlink(missing_ok=True)
    loaded = serialization.load_pem_private_key(private_pem.read_bytes(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(loaded.public_key()))
    kid = hashlib.sha256(f"{public['n']}.{public['e']}".encode()).hexdigest()[:16]
    if not jwks_path.exists():
        public.update(kid=kid, alg="RS256", use="sig")
        jwks_path.write_text(json.dumps({"keys": [public]}, indent=2) + "\n")
    return Keys(private_pem, jwks_path, kid)


def issue(
    user: str,
    scopes: tuple[str, ...] = (),
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    directory: pathlib.Path = DEFAULT_KEYS_DIR,
    now: float | None = None,
) -> str:
    """A token for `user` with the given scopes (a space-separated `scope` claim)."""
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl must be 1..{MAX_TTL_SECONDS} seconds, got {ttl_seconds}")
    if not is_valid_user_id(user):
        raise ValueError(
            f"user must be {USER_ID_RULE} (got {user!r}): the gateway refuses any other"
            " token subject"
        )
    keys = ensure_keys(directory)
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user,
        "scope": " ".join(scopes),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
    }
    return jwt.encode(claims, keys.private_pem.read_bytes(), "RS256", headers={"kid": keys.kid})
