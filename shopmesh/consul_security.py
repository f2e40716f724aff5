"""Consul locked down, for `Settings.mutual_tls`: ACLs on with a default-deny policy, a
token per holder that may register only its own name, gossip encryption, and the HTTP
API on HTTPS only, verifying every caller's certificate.

With ACLs alone some endpoints still answer without a token (the leader's address, the
agent's own metrics), so the API also requires a client certificate from our CA
(`verify_incoming`); plain HTTP is off. Tokens are Consul's service identities: the token
of `inventory` may write the `inventory` service (register, deregister, its checks) and
read the catalog, nothing else; the agent's token is a node identity (its node, and
reading services), without which the agent logs "blocked by ACLs" for its own updates.

Secrets live in owner-only files under WORKDIR/consul-secrets (made once, kept across
restarts, since the tokens live in Consul's raft data too): `master.token` (the
bootstrap token, for operators and for creating the others), `agent.token`,
`NAME.token` per holder, `gossip.key`. A real deployment would keep them in Vault (its
Consul secrets engine issues tokens) and hand each service only its own. Consul's own
logic; our code only writes its configuration and creates the tokens.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import consul

from services.common.registration import ConsulAccess, consul_client
from shopmesh.tools import write_private

DATACENTER = "dc1"
LEGACY_MODE_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class ConsulSecrets:
    """The owner-only files of one Consul's secrets."""

    directory: pathlib.Path

    def token_file(self, holder: str) -> pathlib.Path:
        return self.directory / f"{holder}.token"

    @property
    def gossip_key_file(self) -> pathlib.Path:
        return self.directory / "gossip.key"

    def token(self, holder: str) -> str:
        return self.token_file(holder).read_text().strip()

    def ensure(self, holders: Iterable[str]) -> None:
        """Makes each secret that is not there yet; never replaces one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        for holder in ("master", "agent", *holders):
            _write_once(self.token_file(holder), str(uuid.uuid4()))
        _write_once(self.gossip_key_file, base64.b64encode(os.urandom(32)).decode())


def agent_config(
    secrets: ConsulSecrets, certificate: pathlib.Path, https_port: int
) -> dict[str, Any]:
    """The agent's locked-down settings, for a config file (never flags: `ps` shows those)."""
    return {
        "encrypt": secrets.gossip_key_file.read_text().strip(),
        "acl": {
            "enabled": True,
            "default_policy": "deny",
            # A follower that cannot reach the leader keeps using the tokens it has.
            "down_policy": "extend-cache",
            "tokens": {"master": secrets.token("master"), "agent": secrets.token("agent")},
        },
        "ca_file": str(certificate / "ca.pem"),
        "cert_file": str(certificate / "cert.pem"),
        "key_file": str(certificate / "key.pem"),
        "verify_incoming": True,
        "verify_outgoing": True,
        # Without it Consul 1.8 dials its gRPC checks with no client certificate, and
        # every instance (which requires one) turns critical.
        "enable_agent_tls_for_checks": True,
        "ports": {"http": -1, "https": https_port},
    }


def write_agent_config(path: pathlib.Path, config: dict[str, Any]) -> pathlib.Path:
    write_private(path, json.dumps(config, indent=1))
    return path


def create_tokens(
    access: ConsulAccess, secrets: ConsulSecrets, nodes: Iterable[str], holders: Iterable[str]
) -> None:
    """Creates the agents' token (one, for every node of `nodes`) and one per holder,
    each with the secret in its file; one that exists already (a restarted agent keeps
    them in its raft data) is kept."""
    client = consul_client(access)
    master = secrets.token("master")
    _create(
        client,
        master,
        secrets.token("agent"),
        "the agents' own nodes",
        node_identities=[f"{node}:{DATACENTER}" for node in nodes],
    )
    for holder in holders:
        _create(
            client,
            master,
            secrets.token(holder),
            f"registers {holder} only",
            service_identities=[{"ServiceName": holder}],
        )


def _create(
    client: consul.Consul, master: str, secret: str, description: str, **identities: Any
) -> None:
    # A new cluster's leader answers "The ACL system is currently in legacy mode" for a
    # few seconds after its election, until it has moved the ACLs to their current form.
    deadline = time.monotonic() + LEGACY_MODE_WAIT_SECONDS
    while True:
        try:
            client.acl.token.create(
                token=master, secret_id=secret, description=description, **identities
            )
            return
        except consul.ConsulException as error:
            if "already" in str(error).lower():  # "SecretID is already in use"
                return
            if "legacy mode" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(0.25)


def _write_once(path: pathlib.Path, text: str) -> None:
    if not path.exists():
        write_private(path, text)
