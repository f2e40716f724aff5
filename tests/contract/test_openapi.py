"""docs/openapi.json against the real gateway: it is fresh, live REST responses from Envoy
match its schemas, and a bounded schemathesis run finds no server error and no response
outside the document."""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Any

import jsonschema
import pytest

from shopmesh.openapi import build
from shopmesh.system import System
from shopmesh.tools import REPO
from tests.helpers import run_command
from tests.system_helpers import rest

DOCUMENT = REPO / "docs" / "openapi.json"
SCHEMATHESIS = pathlib.Path(sys.executable).parent / "schemathesis"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT.read_text())
    return loaded


def test_the_document_is_generated_from_the_current_descriptor(document: dict[str, Any]) -> None:
    assert build((REPO / "gen" / "descriptor.binpb").read_bytes()) == document


def check(document: dict[str, Any], path: str, verb: str, status: int, body: Any) -> None:
    """Validates a response body against the document's schema for that response."""
    response = document["paths"][path][verb]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": document["components"]})


def test_live_responses_match_the_document(system: System, document: dict[str, Any]) -> None:
    alice = system.token("alice")
    order = {"request_id": "openapi-1", "line_items": [{"sku": "SKU-TEA", "quantity": 1}]}
    calls = [
        ("/v1/products", "get", rest(system, "GET", "/v1/products?page_size=2", alice)),
        ("/v1/products/{sku}", "get", rest(system, "GET", "/v1/products/SKU-TEA", alice)),
        ("/v1/orders", "post", rest(system, "POST", "/v1/orders", alice, body=order)),
        ("/v1/orders", "get", rest(system, "GET", "/v1/orders", alice)),
        ("/v1/accounts/{user_id}", "get", rest(system, "GET", "/v1/accounts/alice", alice)),
        ("/v1/orders/{order_id}", "get", rest(system, "GET", "/v1/orders/nope", alice)),
        ("/v1/orders", "post", rest(system, "POST", "/v1/orders", alice, body={"request_id": ""})),
    ]
    created = calls[2][2].body["order"]["orderId"]
    calls.append(
        ("/v1/orders/{order_id}", "get", rest(system, "GET", f"/v1/orders/{created}", alice))
    )
    for path, verb, answer in calls:
        assert answer.headers["content-type"] == "application/json"
        check(document, path, verb, answer.status, answer.body)
    # The schemas are strict enough to catch a difference: an int64 sent as a number fails.
    with pytest.raises(jsonschema.ValidationError):
        bad = json.loads(
            json.dumps(calls[1][2].body).replace('"amountMinor": "450"', '"amountMinor": 450')
        )
        check(document, "/v1/products/{sku}", "get", 200, bad)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(system: System) -> None:
    token = system.token("alice", "shop.admin")
    ran = run_command(
        [
            str(SCHEMATHESIS),
            "run",
            str(DOCUMENT),
            "--url",
            f"http://{system.public_target}",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error,response_schema_conformance,"
            "content_type_conformance,status_code_conformance",
            "--max-examples",
            "10",
            "--seed",
            "7",
            "--max-time",
            "25",
            "--phases",
            "coverage,fuzzing",
            "--generation-database",
            "none",
            "--no-color",
            "--request-timeout",
            "10",
        ],
        timeout=120,
    )
    summary = ran.stdout[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert generated is not None, summary
    print(f"schemathesis: {generated.group(0)}")
    assert int(generated.group(1)) >= 100
    assert generated.group(1) == generated.group(2)
