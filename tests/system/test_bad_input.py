"""Bad input against Envoy's public listener: gRPC bytes that are too big, malformed or out
of range, oversized metadata, and REST JSON that is malformed, mistyped, overflowing,
oversized or tries to set what only the server sets. Each gets its expected status, and
no answer carries a stack trace or exception text."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from services.common.status import ErrorDetails, error_details
from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as rpc
from shopmesh.system import System
from tests.system_helpers import bearer, rest

LEAKS = ("Traceback", "<class", "Exception", "DecodeError", 'File "', "sqlite3")


@pytest.fixture(scope="module")
def create(system: System) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_metadata_size", 1 << 20)]
    with grpc.insecure_channel(system.public_target, options=options) as channel:
        yield channel.unary_unary("/shop.order.v1.OrderService/CreateOrder")


def call(
    system: System,
    create: grpc.UnaryUnaryMultiCallable,
    payload: bytes,
    extra: tuple[tuple[str, str], ...] = (),
) -> ErrorDetails | None:
    try:
        create(payload, metadata=bearer(system.token("alice")) + extra, timeout=15)
    except grpc.RpcError as error:
        details = error_details(error)
        assert not any(leak in details.message for leak in LEAKS), details.message
        return details
    return None


def order(request_id: str, quantity: int = 1, items: int = 1) -> bytes:
    line = order_pb2.LineItem(sku="SKU-TEA", quantity=quantity)
    return rpc.CreateOrderRequest(
        request_id=request_id, line_items=[line] * items
    ).SerializeToString()


def length_delimited(field: int, payload: bytes) -> bytes:
    size, varint = len(payload), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        varint.append(byte | (0x80 if size else 0))
        if not size:
            return bytes([(field << 3) | 2]) + bytes(varint) + payload


def test_an_oversized_message_is_resource_exhausted(
    system: System, create: grpc.UnaryUnaryMultiCallable
) -> None:
    error = call(system, create, order("big") + length_delimited(15, b"\0" * (5 << 20)))
    assert error is not None and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_hundred_thousand_items_are_refused(
    system: System, create: grpc.UnaryUnaryMultiCallable
) -> None:
    error = call(system, create, order("many", items=100_000))
    assert error is not None and (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert error.violations[0].field == "line_items"


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff\xff\xff", length_delimited(1, b"\xff\xfe\xfd") + order("")[2:]],
    ids=["corrupt wire format", "invalid UTF-8 in a string"],
)
def test_malformed_protobuf_is_invalid_argument(
    system: System, create: grpc.UnaryUnaryMultiCallable, payload: bytes
) -> None:
    error = call(system, create, payload)
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


def test_deeply_nested_unknown_fields_do_not_crash(
    system: System, create: grpc.UnaryUnaryMultiCallable
) -> None:
    nested = b""
    for _ in range(300):
        nested = length_delimited(15, nested)
    error = call(system, create, order("nested") + nested)
    assert error is None or error.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("quantity", [-5, 0, 1001, 2**31 - 1, -(2**31)])
def test_out_of_range_numbers_are_field_violations(
    system: System, create: grpc.UnaryUnaryMultiCallable, quantity: int
) -> None:
    error = call(system, create, order(f"q{quantity}", quantity=quantity))
    assert error is not None and error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["line_items[0].quantity"]


def test_huge_metadata_is_cut_off_at_the_gateway(
    system: System, create: grpc.UnaryUnaryMultiCallable
) -> None:
    error = call(system, create, order("meta"), (("x-padding", "a" * 20_000),))
    # Envoy's 16 KiB header limit resets the HTTP/2 stream before any service sees it.
    assert error is not None and error.code == grpc.StatusCode.INTERNAL
    assert "RST_STREAM" in error.message
    assert "meta" not in rest(system, "GET", "/v1/orders", system.token("alice")).text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"request_id": ', 400),
        (b'{"request_id": 5, "line_items": "x"}', 400),
        (
            b'{"request_id": "o1", "line_items": [{"sku": "SKU-TEA", "quantity": 99999999999999}]}',
            400,
        ),
        (b'{"request_id": "o1", "line_items": [{"sku": "SKU-TEA", "quantity": "1e400"}]}', 400),
        (b"[]", 400),
        (b"\xff\xfe", 400),
        (
            b'{"request_id": "o1", "line_items": ['
            + b",".join([b'{"sku": "SKU-TEA", "quantity": 1}'] * 5000)
            + b"]}",
            413,
        ),
    ],
    ids=[
        "malformed",
        "wrong types",
        "int32 overflow",
        "number overflow",
        "not an object",
        "not UTF-8",
        "huge body",
    ],
)
def test_bad_json_is_refused(system: System, body: bytes, status: int) -> None:
    answer = rest(system, "POST", "/v1/orders", system.token("alice"), raw_body=body)
    assert answer.status == status, answer.text
    assert not any(leak in answer.text for leak in LEAKS), answer.text


def test_fields_only_the_server_sets_cannot_be_set(system: System) -> None:
    sneaky = {
        "request_id": "sneaky-1",
        "user_id": "bob",
        "owner": "bob",
        "state": "ORDER_STATE_CONFIRMED",
        "total": {"currency_code": "USD", "amount_minor": "1"},
        "line_items": [
            {
                "sku": "SKU-TEA",
                "quantity": 1,
                "unit_price": {"currency_code": "USD", "amount_minor": "1"},
            }
        ],
    }
    answer = rest(system, "POST", "/v1/orders", system.token("alice"), body=sneaky)
    assert answer.status == 200, answer.text
    placed = answer.body["order"]
    assert placed["userId"] == "alice"
    assert placed["lineItems"][0]["unitPrice"]["amountMinor"] == "450"
    assert placed["total"]["amountMinor"] == "450"
    assert "sneaky-1" not in rest(system, "GET", "/v1/orders", system.token("bob")).text


def test_unknown_query_parameters_are_refused(system: System) -> None:
    answer = rest(system, "GET", "/v1/orders?user_id=bob", system.token("alice"))
    assert answer.status == 400
