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

from gateway.envoy_config import http_rules, rule_path, rule_verb

Route = tuple[str, str, str, str]  # (verb, path, body, response_body)


def http_routes(descriptor_set: bytes) -> dict[str, set[Route]]:
    """Each RPC's REST routes, by full method name (`shop.order.v1.OrderService.GetOrder`)."""
    return {
        method: {(rule_verb(r), rule_path(r), r.body, r.response_body) for r in rules}
        for method, rules in http_rules(descriptor_set).items()
    }


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
