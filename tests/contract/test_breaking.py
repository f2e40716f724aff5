"""`make breaking` (tools/breaking) in a scratch clone of this repository: real breaking
edits to the contract fail it, compatible ones pass. buf runs for real. The event checks
run against the clone's own HEAD as the release, since the recorded one has no events."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from shopmesh.tools import REPO
from tests.helpers import run_command

ORDER = "proto/shop/order/v1/order.proto"
ORDER_SERVICE = "proto/shop/order/v1/order_service.proto"
INVENTORY = "proto/shop/inventory/v1/inventory.proto"
INVENTORY_EVENTS = "proto/shop/inventory/v1/inventory_events.proto"
PAYMENT_EVENTS = "proto/shop/payment/v1/payment_events.proto"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A clone that has the release tag, whether or not this repository's clone has it
    (CI's clone has no tags; tools/breaking then uses the commit in api-release)."""
    clone = tmp_path_factory.mktemp("breaking") / "repo"
    run_command(["git", "clone", "-q", REPO, clone])
    tag_release(clone)
    return clone


def release_field(name: str) -> str:
    for line in (REPO / "api-release").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.removeprefix(f"{name}=")
    raise AssertionError(f"api-release has no {name}=")


def tag_release(repo: pathlib.Path) -> None:
    run_command(["git", "tag", "-f", release_field("tag"), release_field("commit")], cwd=repo)


def breaking(
    repo: pathlib.Path, edits: dict[str, tuple[str, str]], against: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Applies {file: (old, new)} edits, runs tools/breaking (against the release, or
    `against` as BREAKING_AGAINST), then restores the files."""
    originals = {}
    for name, (old, new) in edits.items():
        path = repo / name
        originals[path] = path.read_text()
        assert old in originals[path], f"{old!r} not in {name}"
        path.write_text(originals[path].replace(old, new, 1))
    try:
        env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
        env.pop("BREAKING_AGAINST", None)
        if against is not None:
            env["BREAKING_AGAINST"] = against
        return run_command(["tools/breaking"], expect=None, timeout=120, cwd=repo, env=env)
    finally:
        for path, text in originals.items():
            path.write_text(text)


def test_the_current_contract_is_compatible_with_the_release(scratch: pathlib.Path) -> None:
    checked = breaking(scratch, {})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"against .git#tag={release_field('tag')}" in checked.stdout


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        ({INVENTORY: ("  // The product's display name.\n  string name = 2;\n", "")}, "deleted"),
        ({ORDER: ("int32 quantity = 2 [", "int32 quantity = 5 [")}, "quantity"),
        (
            {ORDER_SERVICE: ("rpc GetOrder(GetOrderRequest)", "rpc FetchOrder(GetOrderRequest)")},
            "GetOrder",
        ),
        ({ORDER: ("string cancel_reason = 7;", "int64 cancel_reason = 7;")}, "type"),
        (
            {ORDER_SERVICE: ('get: "/v1/orders/{order_id}"', 'get: "/v1/order/{order_id}"')},
            "REST route GET /v1/orders/{order_id}",
        ),
        (
            {
                ORDER_SERVICE: (
                    'post: "/v1/orders/{order_id}:cancel"',
                    'put: "/v1/orders/{order_id}:cancel"',
                )
            },
            "REST route POST /v1/orders/{order_id}:cancel",
        ),
        (
            {
                ORDER_SERVICE: (
                    'get: "/v1/orders/{order_id}"}',
                    'get: "/v1/orders/{order_id}"\n      response_body: "order"}',
                )
            },
            "now GET /v1/orders/{order_id} (body '', response_body 'order')",
        ),
    ],
    ids=[
        "remove a field",
        "renumber a field",
        "rename an RPC",
        "change a type",
        "change a REST path",
        "change a verb",
        "answer only a part of the response",
    ],
)
def test_breaking_edits_fail(
    scratch: pathlib.Path, edit: dict[str, tuple[str, str]], complaint: str
) -> None:
    checked = breaking(scratch, edit)
    assert checked.returncode != 0, checked.stdout + checked.stderr
    assert complaint in checked.stdout + checked.stderr


@pytest.mark.parametrize(
    "edit",
    [
        {
            ORDER: (
                "  google.protobuf.Timestamp update_time = 9;\n",
                "  google.protobuf.Timestamp update_time = 9;\n  // A note.\n  string note = 10;\n",
            )
        },
        {
            ORDER_SERVICE: (
                "  // CancelOrder cancels",
                "  // PeekOrder returns an order.\n"
                "  rpc PeekOrder(GetOrderRequest) returns (GetOrderResponse) {\n"
                '    option (google.api.http) = {get: "/v1/orders/{order_id}:peek"};\n'
                "  }\n\n  // CancelOrder cancels",
            )
        },
    ],
    ids=["add a field", "add an RPC with a route"],
)
def test_compatible_edits_pass(scratch: pathlib.Path, edit: dict[str, tuple[str, str]]) -> None:
    checked = breaking(scratch, edit)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_clone_without_the_tag_uses_the_recorded_commit(scratch: pathlib.Path) -> None:
    run_command(["git", "tag", "-d", release_field("tag")], cwd=scratch)
    try:
        checked = breaking(scratch, {})
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"against .git#ref={release_field('commit')}" in checked.stdout
    finally:
        tag_release(scratch)


def head(repo: pathlib.Path) -> str:
    """The clone's HEAD as a release: this branch's contract, events included (the
    recorded release, api/v1.0.0, is older than the events)."""
    commit = run_command(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()
    return f".git#ref={commit}"


def block(path: pathlib.Path, message: str) -> str:
    """A message's text in a proto file: its leading comment to its closing brace."""
    text = path.read_text()
    start = text.rindex("\n\n", 0, text.index(f"\nmessage {message} {{")) + 1
    return text[start : text.index("\n}\n", start) + 3]


def test_the_current_events_are_compatible_with_themselves(scratch: pathlib.Path) -> None:
    checked = breaking(scratch, {}, against=head(scratch))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "event types: all 15 of the released contract are still declared" in checked.stdout


def test_the_release_without_events_passes_the_event_check(scratch: pathlib.Path) -> None:
    checked = breaking(scratch, {})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "event types: the released contract declares none" in checked.stdout


def test_removing_a_released_event_fails(scratch: pathlib.Path) -> None:
    # An inventory fact: an order fact is also part of the order API (ListOrderEvents),
    # which would no longer build without it.
    released = block(scratch / INVENTORY_EVENTS, "StockReleased")
    checked = breaking(scratch, {INVENTORY_EVENTS: (released, "")}, against=head(scratch))
    assert checked.returncode != 0, checked.stdout + checked.stderr
    assert (
        "event type shop.inventory.v1.StockReleased (subject shop.inventory.v1.StockReleased)"
        " was removed" in checked.stderr
    )


def test_removing_an_event_spec_fails_though_buf_passes_it(scratch: pathlib.Path) -> None:
    voided = block(scratch / PAYMENT_EVENTS, "PaymentVoided")
    spec = voided[voided.index("  option (shop.events.v1.event)") : voided.index("};\n") + 4]
    edit = {PAYMENT_EVENTS: (voided, voided.replace(spec, ""))}
    checked = breaking(scratch, edit, against=head(scratch))
    assert checked.returncode != 0, checked.stdout + checked.stderr
    assert "shop.payment.v1.PaymentVoided is no longer an event" in checked.stderr
    # buf's rules do not read custom options: it reports nothing (its findings are
    # "proto/FILE:LINE:COLUMN:..." lines), and the event check alone fails the change.
    assert [line for line in checked.stdout.splitlines() if line.startswith("proto/")] == []


def test_moving_a_released_event_to_another_file_fails(scratch: pathlib.Path) -> None:
    restocked = block(scratch / INVENTORY_EVENTS, "StockRestocked")
    money = 'import "shop/money/v1/money.proto";\n'
    edit = {
        INVENTORY_EVENTS: (restocked, ""),
        INVENTORY: (money, f'import "shop/events/v1/options.proto";\n{money}\n{restocked}'),
    }
    checked = breaking(scratch, edit, against=head(scratch))
    assert checked.returncode != 0, checked.stdout + checked.stderr
    assert (
        "event type shop.inventory.v1.StockRestocked moved from"
        " shop/inventory/v1/inventory_events.proto to shop/inventory/v1/inventory.proto"
        in checked.stderr
    )
