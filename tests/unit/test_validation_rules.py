"""services.common.rules, in process: each `(buf.validate.field)` annotation it supports
gives the violations protovalidate's rule means, an annotation it does not support stops
it from starting, and the contract's annotations are the ones the services, their
settings and the OpenAPI document use."""

from __future__ import annotations

import itertools
import re
import time
from typing import Any, cast

import pytest
from buf.validate import validate_pb2
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    field_mask_pb2,
    message_factory,
    text_format,
    timestamp_pb2,
)

from services.common import identity, validation
from services.common.errors import Violations
from services.common.rules import RequestRules, UnsupportedRule
from shop.inventory.v1 import inventory_service_pb2
from shop.order.v1 import order_pb2, order_service_pb2
from shop.payment.v1 import payment_service_pb2
from shopmesh.openapi import constraints
from shopmesh.tools import REPO

Field = descriptor_pb2.FieldDescriptorProto
_files = itertools.count()


def field(
    name: str,
    number: int,
    kind: str = "string",
    rules: str = "",
    *,
    repeated: bool = False,
    message: str = "",
) -> Field:
    """A field of a test message, with its annotation in protobuf text format."""
    made = Field(
        name=name,
        number=number,
        type=Field.Type.Value(f"TYPE_{kind.upper()}"),
        label=Field.LABEL_REPEATED if repeated else Field.LABEL_OPTIONAL,
    )
    if message:
        made.type_name = message
    if rules:
        text_format.Parse(rules, cast(Any, made.options).Extensions[validate_pb2.field])
    return made


def compile_messages(**messages: list[Field]) -> tuple[RequestRules, dict[str, Any]]:
    """The rules of a proto file of the given messages (package `t`), and their classes."""
    pool = descriptor_pool.DescriptorPool()
    for dependency in (descriptor_pb2, duration_pb2, field_mask_pb2, timestamp_pb2, validate_pb2):
        pool.AddSerializedFile(dependency.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name=f"t{next(_files)}.proto",
        package="t",
        syntax="proto3",
        dependency=["buf/validate/validate.proto", "google/protobuf/duration.proto"],
    )
    for name, fields in messages.items():
        file.message_type.add(name=name, field=fields)
    pool.Add(file)
    rules = RequestRules([pool.FindFileByName(file.name)])
    classes = {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"t.{name}"))
        for name in messages
    }
    return rules, classes


def problems(rules: RequestRules, message: Any) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in rules.violations(message)]


def test_string_lengths_count_characters_and_patterns_match_whole() -> None:
    rules, m = compile_messages(
        M=[
            field("name", 1, rules="string: {min_len: 2, max_len: 3}"),
            field("code", 2, rules='string: {pattern: "^[A-Z]{3}$"}'),
        ]
    )
    assert problems(rules, m["M"](name="éé", code="USD")) == []
    assert problems(rules, m["M"](name="é", code="usd")) == [
        ("name", "must be at least 2 characters"),
        ("code", "must match ^[A-Z]{3}$"),
    ]
    assert problems(rules, m["M"](name="abcd", code="USD\n")) == [
        ("name", "must be at most 3 characters"),
        ("code", "must match ^[A-Z]{3}$"),  # RE2's $ is the end of the text, not a newline
    ]


def test_integer_bounds_are_inclusive_for_gte_and_lte_and_exclusive_for_gt_and_lt() -> None:
    rules, m = compile_messages(
        M=[
            field("closed", 1, "int32", "int32: {gte: 1, lte: 1000}"),
            field("open", 2, "int64", "int64: {gt: 0, lt: 10}"),
            field("floor", 3, "uint32", "uint32: {gte: 5}"),
        ]
    )
    assert problems(rules, m["M"](closed=1, open=1, floor=5)) == []
    assert problems(rules, m["M"](closed=1000, open=9, floor=6)) == []
    assert problems(rules, m["M"](closed=0, open=0, floor=4)) == [
        ("closed", "must be 1..1000"),
        ("open", "must be 1..9"),
        ("floor", "must be at least 5"),
    ]
    assert problems(rules, m["M"](closed=1001, open=10, floor=5)) == [
        ("closed", "must be 1..1000"),
        ("open", "must be 1..9"),
    ]


def test_durations_are_bounded_and_said_in_words() -> None:
    rules, m = compile_messages(
        M=[
            field(
                "lasts",
                1,
                "message",
                "duration: {gte: {seconds: 1}, lte: {seconds: 3600}}",
                message=".google.protobuf.Duration",
            )
        ]
    )
    ok = m["M"]()
    assert problems(rules, ok) == []  # unset: nothing to check
    ok.lasts.FromSeconds(3600)
    assert problems(rules, ok) == []
    short = m["M"]()
    short.lasts.FromNanoseconds(999_999_999)
    assert problems(rules, short) == [("lasts", "must be 1 second to 1 hour")]


def test_lists_are_counted_and_their_elements_checked_by_path() -> None:
    rules, m = compile_messages(
        Item=[field("sku", 1, rules='string: {pattern: "^[A-Z]+$"}')],
        M=[
            field(
                "items",
                1,
                "message",
                "repeated: {min_items: 1, max_items: 3}",
                repeated=True,
                message=".t.Item",
            ),
        ],
    )
    item = m["Item"]
    assert problems(rules, m["M"]()) == [("items", "must hold 1 to 3 items")]
    assert problems(rules, m["M"](items=[item(sku="A"), item(sku="b")])) == [
        ("items[1].sku", "must match ^[A-Z]+$")
    ]
    # Past max_items the elements are not checked: the list is refused anyway.
    assert problems(rules, m["M"](items=[item(sku="A")] * 3 + [item(sku="b")])) == [
        ("items", "must hold 1 to 3 items")
    ]


def test_a_huge_list_is_refused_as_fast_as_a_short_one() -> None:
    request = order_service_pb2.CreateOrderRequest(
        request_id="r1", line_items=[order_pb2.LineItem(sku="SKU-TEA", quantity=0)] * 100_000
    )
    started = time.process_time()
    found = list(validation.violations(request))
    assert time.process_time() - started < 0.05
    assert [v.field for v in found[:2]] == ["line_items", "line_items[0].quantity"]
    assert len(found) == 51  # the count, and the first 50 items' quantities


def test_nested_messages_are_checked_when_set_and_required_ones_must_be() -> None:
    rules, m = compile_messages(
        Money=[field("currency", 1, rules='string: {pattern: "^[A-Z]{3}$"}')],
        M=[
            field("amount", 1, "message", "required: true", message=".t.Money"),
            field("price", 2, "message", message=".t.Money"),
            field("ignored", 3, "message", "ignore: IGNORE_ALWAYS", message=".t.Money"),
        ],
    )
    money = m["Money"]
    assert problems(rules, m["M"]()) == [("amount", "is required")]
    bad = money(currency="usd")
    assert problems(rules, m["M"](amount=bad, price=bad, ignored=bad)) == [
        ("amount.currency", "must match ^[A-Z]{3}$"),
        ("price.currency", "must match ^[A-Z]{3}$"),
    ]


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ([field("a", 1, rules='cel: {id: "x", expression: "true"}')], "cel"),
        ([field("a", 1, rules="string: {email: true}")], "string.email"),
        ([field("a", 1, rules="string: {len: 3}")], "string.len"),
        ([field("a", 1, rules='string: {pattern: "[A-Z]"}')], "is not ^...$"),
        ([field("a", 1, rules='string: {pattern: "^a|b$"}')], "is not ^...$"),
        ([field("a", 1, rules="ignore: IGNORE_IF_ZERO_VALUE")], "ignore"),
        ([field("a", 1, rules="required: true")], "required is for message fields"),
        ([field("a", 1, rules="int32: {gte: 1}")], "does not fit"),
        ([field("a", 1, "int32", "int32: {const: 1}")], "int32.const"),
        ([field("a", 1, "int32", "repeated: {min_items: 1}")], "does not fit"),
        ([field("a", 1, "int32", "repeated: {unique: true}", repeated=True)], "repeated.unique"),
    ],
)
def test_an_unsupported_annotation_stops_the_start(fields: list[Field], refused: str) -> None:
    with pytest.raises(UnsupportedRule, match=re.escape(refused)):
        compile_messages(M=fields)


def test_every_field_of_every_request_is_annotated_but_the_page_tokens() -> None:
    """A new request field gets its rule in the contract, or a reason to be listed here."""
    unannotated = []
    for file in (order_service_pb2, inventory_service_pb2, payment_service_pb2):
        for service in file.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                for item in method.input_type.fields:
                    if not item.GetOptions().HasExtension(validate_pb2.field):
                        unannotated.append(f"{method.input_type.name}.{item.name}")
    assert sorted(unannotated) == [
        "ListOrderEventsRequest.page_token",
        "ListOrdersRequest.page_token",
        "ListParkedOrdersRequest.page_token",
        "ListProductsRequest.page_token",
    ]


def test_the_user_id_rule_is_the_identity_alphabet() -> None:
    """Users are named by the gateway's identity headers, which services.common.identity
    checks: GetAccount accepts exactly the ids a caller can have."""
    request = payment_service_pb2.GetAccountRequest
    for user_id in ["alice", "a.b_c@d+e-f", "x" * 128, "", "x" * 129, "zoë", "a b", "a/b"]:
        found = list(validation.violations(request(user_id=user_id)))
        assert (found == []) == identity.is_valid_user_id(user_id), user_id


def test_the_limits_the_settings_use_are_the_annotations() -> None:
    assert (validation.MIN_HOLD_SECONDS, validation.MAX_HOLD_SECONDS) == (1.0, 3600.0)
    assert (validation.MIN_AUTHORIZATION_SECONDS, validation.MAX_AUTHORIZATION_SECONDS) == (
        1.0,
        7 * 86_400.0,
    )


def test_each_sku_once_flags_the_second_listing_of_a_valid_sku() -> None:
    request = order_service_pb2.CreateOrderRequest(
        request_id="r1",
        line_items=[
            order_pb2.LineItem(sku=sku, quantity=1)
            for sku in ["SKU-A", "SKU-B", "SKU-A", "bad", "bad", "SKU-B"]
        ],
    )
    found = validation.violations(request)
    validation.check_each_sku_once(
        found, order_service_pb2.CreateOrderRequest, "line_items", request.line_items
    )
    assert [(v.field, v.description) for v in found] == [
        ("line_items[3].sku", "must match ^[A-Z0-9][A-Z0-9-]{0,63}$"),
        ("line_items[4].sku", "must match ^[A-Z0-9][A-Z0-9-]{0,63}$"),
        ("line_items[2].sku", "is listed twice"),
        ("line_items[5].sku", "is listed twice"),
    ]


def test_openapi_constraints_come_from_the_annotations() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(
        (REPO / "gen" / "descriptor.binpb").read_bytes()
    )
    fields = {
        f"{message.name}.{item.name}": item
        for file in files.file
        for message in file.message_type
        for item in message.field
    }
    assert constraints(fields["CreateOrderRequest.line_items"]) == {"minItems": 1, "maxItems": 50}
    assert constraints(fields["LineItem.quantity"]) == {"minimum": 1, "maximum": 1000}
    assert constraints(fields["GetAccountRequest.user_id"]) == {
        "minLength": 1,
        "maxLength": 128,
        "pattern": "^[A-Za-z0-9._@+-]*$",
    }
    assert constraints(fields["ListOrdersRequest.page_token"]) == {}
    assert constraints(fields["ReserveStockRequest.hold_duration"]) == {}


def test_violations_collect_into_a_given_list() -> None:
    into = Violations()
    into.add("page_token", "is not a token this method returned")
    validation.REQUEST_RULES.violations(order_service_pb2.ListOrdersRequest(page_size=-1), into)
    assert [v.field for v in into] == ["page_token", "page_size"]
