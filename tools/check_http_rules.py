"""Fails if a REST route of the released contract was removed or changed.

No buf breaking rule looks at `google.api.http` options, so a changed verb, path, body or
response body passes buf while it breaks every REST client. This compares the rules (verb,
path, body, response_body, and additional bindings) of each RPC in two descriptor sets: a
route that was removed or changed fails; an added route or RPC is fine. No library does
this comparison.

    python tools/check_http_rules.py RELEASED.binpb CURRENT.binpb
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

Route = tuple[str, str, str, str]  # (verb, path, body, response_body)


def _routes(rule: http_pb2.HttpRule) -> Iterator[Route]:
    pattern = rule.WhichOneof("pattern")
    if pattern == "custom":
        yield (rule.custom.kind.upper(), rule.custom.path, rule.body, rule.response_body)
    elif pattern:
        yield (pattern.upper(), getattr(rule, pattern), rule.body, rule.response_body)
    for binding in rule.additional_bindings:
        yield from _routes(binding)


def http_routes(descriptor_set: bytes) -> dict[str, set[Route]]:
    """Each RPC's REST routes, by full method name (`shop.order.v1.OrderService.GetOrder`)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    routes: dict[str, set[Route]] = {}
    for file in files.file:
        for service in file.service:
            for method in service.method:
                name = f"{file.package}.{service.name}.{method.name}"
                rule = method.options.Extensions[annotations_pb2.http]
                routes[name] = set(_routes(rule))
    return routes


def breaking_changes(released: dict[str, set[Route]], current: dict[str, set[Route]]) -> list[str]:
    problems = []
    for method, routes in sorted(released.items()):
        for route in sorted(routes - current.get(method, set())):
            now = ", ".join(_shown(r) for r in sorted(current.get(method, ())))
            problems.append(
                f"{method}: REST route {_shown(route)} was removed or changed"
                + (f"; now {now}" if now else "")
            )
    return problems


def _shown(route: Route) -> str:
    verb, path, body, response_body = route
    shown = f"{verb} {path} (body {body!r}"
    return shown + (f", response_body {response_body!r})" if response_body else ")")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], "rb") as released, open(argv[2], "rb") as current:
        problems = breaking_changes(http_routes(released.read()), http_routes(current.read()))
    for problem in problems:
        print(f"breaking REST change: {problem}", file=sys.stderr)
    if not problems:
        print("REST routes: no route of the released contract was removed or changed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
