"""docs/api-reference.md, the generated API reference: fresh, and saying what the contracts
say (routes, callers, errors, fields). Starts no process."""

from __future__ import annotations

import re

import pytest

from shopmesh.api_reference import errors, render
from shopmesh.openapi import INTERNAL_METHODS
from shopmesh.tools import REPO

PAGE = REPO / "docs" / "api-reference.md"
DESCRIPTOR_SET = REPO / "gen" / "descriptor.binpb"


@pytest.fixture(scope="module")
def page() -> str:
    return PAGE.read_text()


def section(page: str, method: str) -> str:
    """The page's section for one method, from its heading to the next."""
    start = page.index(f"\n### {method}\n")
    return page[start : page.index("\n### ", start + 1)]


def test_the_page_is_generated_from_the_current_descriptor_set(page: str) -> None:
    assert render(DESCRIPTOR_SET.read_bytes()) == page


def test_every_method_has_a_section_with_its_grpc_name_and_rest_route(page: str) -> None:
    methods = re.findall(r"^\| gRPC \| `([\w.]+)/(\w+)` \|$", page, re.MULTILINE)
    assert len(methods) == 27
    routes = re.findall(r"^\| REST \| `(GET|POST|PUT) (/v1/\S+)`", page, re.MULTILINE)
    assert len(routes) == len(methods)
    assert ("POST", "/v1/orders/{order_id}:cancel") in routes
    assert ("GET", "/v1/orders/{order_id}/events") in routes
    assert ("GET", "/v1/accounts/{user_id}") in routes
    assert ("PUT", "/v1/notifications/contact") in routes
    assert ("GET", "/v1/reports/lag") in routes


def test_a_method_shows_its_route_fields_and_errors(page: str) -> None:
    create = section(page, "CreateOrder")
    assert "| REST | `POST /v1/orders`, the request as the JSON body |" in create
    assert "| caller | any token |" in create
    assert "`FAILED_PRECONDITION` (HTTP 400): `OUT_OF_STOCK`, `INSUFFICIENT_FUNDS`" in create
    assert "`ALREADY_EXISTS` (HTTP 409): `REQUEST_ID_REUSED`" in create
    assert "| `request_id` | `string` | A unique id the caller chooses" in create
    assert "| `line_items` | repeated [`LineItem`](#shoporderv1lineitem) |" in create
    listing = section(page, "ListOrders")
    assert "| REST | `GET /v1/orders`, query: `page_size`, `page_token` |" in listing
    assert "\n### `shop.order.v1.OrderState`\n" in page
    assert "| `ORDER_STATE_CONFIRMED` | 2 |" in page


def test_the_admin_scope_and_internal_methods_are_named(page: str) -> None:
    for method in ("RestockProduct", "ListParkedOrders", "ResumeOrder"):
        assert "| caller | a token with the `shop.admin` scope |" in section(page, method)
    for full_name in INTERNAL_METHODS:
        assert "| caller | internal:" in section(page, full_name.rsplit(".", 1)[-1])


def test_errors_are_read_from_the_comment_after_returns() -> None:
    comment = (
        "CancelOrder cancels an order, unless CONFIRMED. Returns NOT_FOUND (ORDER_NOT_FOUND)"
        " and FAILED_PRECONDITION (ORDER_ALREADY_CONFIRMED or ORDER_NOT_PARKED)."
    )
    assert errors(comment) == [
        ("NOT_FOUND", ["ORDER_NOT_FOUND"]),
        ("FAILED_PRECONDITION", ["ORDER_ALREADY_CONFIRMED", "ORDER_NOT_PARKED"]),
    ]
    assert errors("GetThing returns a thing.") == []


def test_a_one_word_code_takes_its_own_reasons() -> None:
    """ABORTED has no underscore; its reason was listed under the code before it."""
    comment = "Returns NOT_FOUND (ACCOUNT_NOT_FOUND) or ABORTED (INVENTORY_UNAVAILABLE) via REST."
    assert errors(comment) == [
        ("NOT_FOUND", ["ACCOUNT_NOT_FOUND"]),
        ("ABORTED", ["INVENTORY_UNAVAILABLE"]),
    ]
