"""`make breaking` (tools/breaking) in a scratch clone of this repository: real breaking
edits to the contract fail it, compatible ones pass. buf runs for real."""

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
    repo: pathlib.Path, edits: dict[str, tuple[str, str]]
) -> subprocess.CompletedProcess[str]:
    """Applies {file: (old, new)} edits, runs tools/breaking, then restores the files."""
    originals = {}
    for name, (old, new) in edits.items():
        path = repo / name
        originals[path] = path.read_text()
        assert old in originals[path], f"{old!r} not in {name}"
        path.write_text(originals[path].replace(old, new, 1))
    try:
        env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
        env.pop("BREAKING_AGAINST", None)
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
