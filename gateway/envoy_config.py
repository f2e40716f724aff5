"""Renders gateway/envoy.yaml: fills in the ports, addresses, paths and limits.

Only what differs between `make run` and the tests is a ${NAME} placeholder, and one
policy value the order service must agree with (the OrderService route's per-try timeout);
the rest of the policy lives in the YAML. Rendering fails if a placeholder is left unfilled.
"""

from __future__ import annotations

import json
import pathlib
import re
import string
from dataclasses import asdict, dataclass, field

import yaml
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from gateway import mutual_tls
from services.common.config import is_loopback
from services.common.identity import USER_ID_PATTERN, USER_ID_RULE

TEMPLATE = pathlib.Path(__file__).with_name("envoy.yaml")


@dataclass(frozen=True)
class Limits:
    """Envoy's limits: the only Envoy policy a test or a deployment tunes."""

    # Circuit breakers of inventory and payment (the internal hop) ...
    max_connections: int = 1024
    max_pending_requests: int = 256
    max_requests: int = 512
    max_retries: int = 32
    # ... of the order cluster (the public edge) ...
    edge_max_pending_requests: int = 256
    edge_max_requests: int = 512
    # ... and of the order instances' health route, which needs no token.
    health_max_requests: int = 32
    # The edge itself: client connections on the public listener, in all, and the heap
    # Envoy may use before it sheds load (the overload manager).
    edge_max_connections: int = 4096
    request_timeout_seconds: float = 15.0
    """How long a client may take to send a whole request, body included."""
    max_downstream_connections: int = 8192
    max_heap_bytes: int = 512 * 1024 * 1024
    # Rate limits: token buckets, each a sustained rate and a burst (the bucket's size, the
    # most admitted at once), per Envoy process. Every call with a verified token counts
    # against its user's bucket; CreateOrder, which holds stock, also against the user's
    # order bucket ...
    user_requests_per_second: float = 50.0
    user_request_burst: int = 100
    user_orders_per_second: float = 5.0
    user_order_burst: int = 10
    # ... every request on the public listener against one bucket shared by all, but the
    # two health routes (no token), which have one bucket each.
    listener_requests_per_second: float = 2000.0
    listener_request_burst: int = 4000
    health_requests_per_second: float = 100.0
    health_request_burst: int = 200
    max_users_tracked: int = 10_000
    """Users with a bucket at once (Envoy's max_dynamic_descriptors, an LRU): one pushed
    out comes back with a full bucket. Enough if it exceeds `users_admitted_while_refilling`,
    every user the listener's bucket can admit while a user's bucket refills."""

    def __post_init__(self) -> None:
        rates = [n for n in self.__dataclass_fields__ if n.endswith("_per_second")]
        bursts = [n for n in self.__dataclass_fields__ if n.endswith("_burst")]
        bad = [n for n in rates if not getattr(self, n) > 0]
        bad += [n for n in (*bursts, "max_users_tracked") if getattr(self, n) < 1]
        if bad:
            raise ValueError(f"must be positive: {', '.join(bad)}")

    def users_admitted_while_refilling(self) -> int:
        """The most distinct users the listener's bucket admits in the time an empty user
        bucket takes to fill again: an LRU larger than this never forgets a user whose
        bucket is not full again."""
        refill_seconds = max(
            self.user_request_burst / self.user_requests_per_second,
            self.user_order_burst / self.user_orders_per_second,
        )
        return int(self.listener_request_burst + self.listener_requests_per_second * refill_seconds)


# Rate limits far above what one machine can send, every other limit as it is: for the
# benchmark and the tests that load the system, which measure the system, not the
# limiter (the rate-limit filters still run, at their full cost). Each says so where it
# builds its system; tests/system/test_rate_limits.py sets tight ones.
UNTHROTTLED = Limits(
    user_requests_per_second=1_000_000,
    user_request_burst=1_000_000,
    user_orders_per_second=1_000_000,
    user_order_burst=1_000_000,
    listener_requests_per_second=1_000_000,
    listener_request_burst=1_000_000,
    health_requests_per_second=1_000_000,
    health_request_burst=1_000_000,
)


def token_bucket(per_second: float, burst: int) -> str:
    """Envoy's token bucket for a rate and a burst, as YAML: whole tokens per fill (about
    one second's worth, at least one) and the interval that makes the rate."""
    tokens = max(1, round(per_second))
    interval = max(50, round(1000 * tokens / per_second)) / 1000  # Envoy's shortest: 50 ms
    return f"{{max_tokens: {burst}, tokens_per_fill: {tokens}, fill_interval: {interval:.3f}s}}"


@dataclass(frozen=True)
class EnvoySettings:
    """Everything the template leaves open: where Envoy listens and finds its files.
    shopmesh.system.envoy_settings fills it from the system's settings."""

    public_port: int
    internal_port: int
    admin_port: int
    xds_port: int
    public_address: str
    jwks_file: str
    descriptor_file: str
    jwt_issuer: str
    jwt_audience: str
    order_try_timeout_seconds: float
    """Per-try timeout of the OrderService route; CreateOrder's wait stays below it."""
    limits: Limits = field(default_factory=Limits)
    mutual_tls: bool = False
    """Call the services over mutual TLS and serve it on the internal listener, with the
    certificates the control plane sends over SDS (gateway/mutual_tls.py)."""
    internal_address: str = "127.0.0.1"
    """Where the internal listener listens: loopback in plaintext; a host's address is
    for mutual TLS only (whoever reaches a plaintext listener is believed)."""

    def __post_init__(self) -> None:
        if not self.mutual_tls and not is_loopback(self.internal_address):
            raise ValueError(
                f"the internal listener may listen on {self.internal_address} only under"
                " mutual TLS: in plaintext it believes every caller's x-shop-user"
            )


def render(settings: EnvoySettings) -> str:
    fields = {**asdict(settings), **asdict(settings.limits)}
    del fields["limits"]
    values = {key.upper(): str(value) for key, value in fields.items()}
    # Policy with one source elsewhere: the user-id alphabet, and the contracts' routes.
    values["USER_ID_REGEX"] = f"^{USER_ID_PATTERN}$"
    values["USER_ID_RULE"] = USER_ID_RULE
    limits = settings.limits
    for bucket in ("user_request", "user_order", "listener_request", "health_request"):
        rate, burst = getattr(limits, f"{bucket}s_per_second"), getattr(limits, f"{bucket}_burst")
        values[f"{bucket.upper()}_BUCKET"] = token_bucket(rate, burst)
    descriptor = pathlib.Path(settings.descriptor_file).read_bytes()
    names = sorted(path_parameters(descriptor))
    json_names = [re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), n) for n in names]
    values["PATH_PARAMETERS_LUA"] = ", ".join(f'["{n}"] = true' for n in {*names, *json_names})
    rendered = string.Template(TEMPLATE.read_text()).substitute(values)
    if not settings.mutual_tls:
        return rendered
    # JSON is YAML to Envoy, and has no anchors for the shared pieces to alias.
    return json.dumps(mutual_tls.apply(yaml.safe_load(rendered)), indent=1)


def http_rules(descriptor_set: bytes) -> dict[str, list[http_pb2.HttpRule]]:
    """Each RPC's REST rules (additional bindings flattened), by full method name; also
    what tools/check_http_rules.py compares between releases."""
    rules: dict[str, list[http_pb2.HttpRule]] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file:
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                flat = [rule, *rule.additional_bindings]
                rules[f"{file.package}.{service.name}.{method.name}"] = [
                    r for r in flat if r.WhichOneof("pattern")
                ]
    return rules


def rule_path(rule: http_pb2.HttpRule) -> str:
    pattern = rule.WhichOneof("pattern")
    return rule.custom.path if pattern == "custom" else str(getattr(rule, pattern))


def rule_verb(rule: http_pb2.HttpRule) -> str:
    pattern = rule.WhichOneof("pattern")
    return rule.custom.kind.upper() if pattern == "custom" else str(pattern).upper()


def path_parameters(descriptor_set: bytes) -> set[str]:
    """The field names any REST path binds (`order_id` in /v1/orders/{order_id})."""
    return {
        match.group(1).split(".")[0]
        for rules in http_rules(descriptor_set).values()
        for rule in rules
        for match in re.finditer(r"\{([^}=]+)", rule_path(rule))
    }


def write(settings: EnvoySettings, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(settings))
    return path
