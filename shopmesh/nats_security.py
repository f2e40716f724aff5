"""NATS locked down, for `Settings.mutual_tls`: TLS only, a client certificate from our
CA required, and each certificate mapped to a user whose permissions are its service's.

The server (2.9.10) maps a client's certificate to a user by its DNS SAN
(`verify_and_map`; ours name `NAME.shopmesh.local`): a certificate from our CA naming no
user listed here is refused, and without one from our CA no TLS handshake completes, so
nobody connects anonymously. Each service may publish only its own events' subjects
(`shop.<service>.>`, the events' types: services/common/events.py), so an
OrderConfirmed from anyone but the order service is refused; it may manage the stream
(every service declares it at start) and its own durable consumers, and receive
replies. `operator` (shopmesh's own tools and tests) may do anything.

Our own code writes the server's configuration; NATS enforces it.
"""

from __future__ import annotations

import pathlib

from services.common.jetstream import STREAM
from services.common.tls import dns_name

OPERATOR = "operator"
CONSUMERS = {"notification": ("notification",), "reporting": ("*",)}
"""Each consuming service's durable names; reporting's rebuild makes one per run
(`reporting-rebuild-<random>`), which a subject token cannot match but by `*`."""
PUBLISHERS = ("order", "inventory", "payment", "notification", "reporting")

STREAM_API = [
    "$JS.API.INFO",
    f"$JS.API.STREAM.INFO.{STREAM}",
    f"$JS.API.STREAM.CREATE.{STREAM}",
    f"$JS.API.STREAM.UPDATE.{STREAM}",
]
"""What declaring the stream takes (services/common/jetstream.py's declare_stream)."""


def consumer_api(durable: str) -> list[str]:
    """What declaring, fetching from and acking a durable consumer takes."""
    return [
        f"$JS.API.CONSUMER.*.{STREAM}.{durable}",
        f"$JS.API.CONSUMER.*.{STREAM}.{durable}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable}",
        f"$JS.ACK.{STREAM}.{durable}.>",
    ]


def users() -> list[dict[str, object]]:
    found: list[dict[str, object]] = [{"user": dns_name(OPERATOR)}]  # no limits
    for service in PUBLISHERS:
        publish = [f"shop.{service}.>", *STREAM_API]
        for durable in CONSUMERS.get(service, ()):
            publish += consumer_api(durable)
        found.append(
            {
                "user": dns_name(service),
                "permissions": {
                    "publish": {"allow": publish},
                    "subscribe": {"allow": ["_INBOX.>"]},
                },
            }
        )
    return found


def server_config(certificate: pathlib.Path) -> dict[str, object]:
    """The TLS and authorization blocks of nats-server's config (JSON is its format too)."""
    return {
        "tls": {
            "cert_file": str(certificate / "cert.pem"),
            "key_file": str(certificate / "key.pem"),
            "ca_file": str(certificate / "ca.pem"),
            "verify_and_map": True,
            "timeout": 2,
        },
        "authorization": {"users": users()},
    }
