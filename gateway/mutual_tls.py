"""gateway/envoy.yaml under mutual TLS: what `envoy_config.render` adds to the rendered
config when EnvoySettings.mutual_tls is set.

- Every service cluster calls its instances over TLS, presenting Envoy's certificate,
  and accepts only an instance whose certificate names that service by its SPIFFE ID
  (`match_typed_subject_alt_names`, URI).
- The internal listener serves TLS only and requires a client certificate from our CA;
  it sets x-forwarded-client-cert to its caller's SPIFFE ID (SANITIZE_SET: one a caller
  sends is replaced), which is how a service knows whose word the identity headers are
  (services/common/identity.py); its RBAC admits per method: the saga-participant RPCs
  to the order service only, GetProduct to reporting (the read model's product names),
  nothing else to anyone, so no admin method is reachable there (scopes come only from
  the public listener's verified token).
- The public listener removes any x-forwarded-client-cert a client sends (SANITIZE).

Certificates come over SDS from the control plane (gateway/controlplane/secrets.py), so
a renewal reaches Envoy without a restart. Built on the parsed YAML, so the plaintext
config stays the readable file it is.
"""

from __future__ import annotations

from typing import Any

from gateway.controlplane.secrets import CERTIFICATE, TRUSTED_CA
from services.common.identity import ORDER
from services.common.tls import spiffe_id

TLS_TYPES = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
SDS = {"ads": {}, "resource_api_version": "V3"}
CERTIFICATE_SDS = [{"name": CERTIFICATE, "sds_config": SDS}]
TRUSTED_CA_SDS = {"name": TRUSTED_CA, "sds_config": SDS}

SAGA_PARTICIPANT_METHODS = (
    "/shop.inventory.v1.InventoryService/ReserveStock",
    "/shop.inventory.v1.InventoryService/CommitReservation",
    "/shop.inventory.v1.InventoryService/ReleaseReservation",
    "/shop.payment.v1.PaymentService/AuthorizePayment",
    "/shop.payment.v1.PaymentService/CapturePayment",
    "/shop.payment.v1.PaymentService/VoidPayment",
)
"""The calls services/order/participants.py makes, and only those."""

INTERNAL_POLICIES = {
    "saga-participants": (ORDER, SAGA_PARTICIPANT_METHODS),
    "product-names": (spiffe_id("reporting"), ("/shop.inventory.v1.InventoryService/GetProduct",)),
}
"""The internal listener's RBAC: policy -> (the one identity, the methods it may call)."""

CLUSTER_IDENTITY = {"order_health": "order"}
"""Clusters whose instances are a service of another name; the rest are named for theirs."""


def apply(config: dict[str, Any]) -> dict[str, Any]:
    """Adds mutual TLS to a rendered gateway/envoy.yaml, in place; returns it."""
    resources = config["static_resources"]
    for cluster in resources["clusters"]:
        if cluster["name"] != "xds":  # the control plane: on loopback, see docs
            service = CLUSTER_IDENTITY.get(cluster["name"], cluster["name"])
            cluster["transport_socket"] = upstream_tls(spiffe_id(service))
    for listener in resources["listeners"]:
        manager = _connection_manager(listener)
        if listener["name"] == "internal":
            listener["filter_chains"][0]["transport_socket"] = downstream_tls()
            manager["forward_client_cert_details"] = "SANITIZE_SET"
            manager["set_current_client_cert_details"] = {"uri": True}
            manager["http_filters"].insert(0, internal_rbac())
        else:
            manager["forward_client_cert_details"] = "SANITIZE"
    return config


def upstream_tls(identity: str) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{TLS_TYPES}.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": CERTIFICATE_SDS,
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"exact": identity}}
                        ]
                    },
                    "validation_context_sds_secret_config": TRUSTED_CA_SDS,
                },
            },
        },
    }


def downstream_tls() -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{TLS_TYPES}.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": CERTIFICATE_SDS,
                "validation_context_sds_secret_config": TRUSTED_CA_SDS,
            },
        },
    }


def internal_rbac() -> dict[str, Any]:
    policies = {
        name: {
            "permissions": [{"url_path": {"path": {"exact": m}}} for m in methods],
            "principals": [{"authenticated": {"principal_name": {"exact": identity}}}],
        }
        for name, (identity, methods) in INTERNAL_POLICIES.items()
    }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": policies},
        },
    }


def _connection_manager(listener: dict[str, Any]) -> dict[str, Any]:
    for item in listener["filter_chains"][0]["filters"]:
        if item["name"] == "envoy.filters.network.http_connection_manager":
            return item["typed_config"]  # type: ignore[no-any-return]
    raise ValueError(f"listener {listener['name']} has no HTTP connection manager")
