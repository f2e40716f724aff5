"""A hostile or careless client against Envoy's public listener: what it sends is its own
fault, so it gets a 4xx (gRPC: a client-fault status), never a 5xx or internal text, and
never counts against an instance's health (Envoy's outlier-ejection counters stay 0).

Each case here answered 500 or 503, or was obeyed, before the gateway and the services
refused it. They come in three groups: the user-id alphabet, client faults that answered
5xx, and what a client may not steer.
"""

from __future__ import annotations

import base64
import http.client
import os
import time
import uuid
from collections.abc import Iterator

import grpc
import jwt
import pytest

from shop.order.v1 import order_pb2
from shop.order.v1 import order_service_pb2 as rpc
from shop.order.v1.order_service_pb2_grpc import OrderServiceStub
from shopmesh import tokens
from shopmesh.system import System
from tests.helpers import record_fault, run_command
from tests.system_helpers import SystemFactory, bearer, rest

INTERNAL_TEXT = ("Traceback", "metadata", "x-shop-", "Error parsing", "invalid header value")


def token_for(system: System, subject: str) -> str:
    """A validly signed token whose `sub` is anything at all (shopmesh token refuses most)."""
    now = int(time.time())
    claims = {
        "iss": tokens.ISSUER,
        "aud": tokens.AUDIENCE,
        "sub": subject,
        "scope": "",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    key = system.keys.private_pem.read_bytes()
    return jwt.encode(claims, key, "RS256", headers={"kid": system.keys.kid})


def ejections(system: System) -> dict[str, int]:
    """Ejections Envoy carried out, per cluster and cause, and upstream 5xx answers (only
    the counters that are not 0)."""
    return {
        name: value
        for name, value in system.stats("cluster.").items()
        if value
        and (
            ".outlier_detection.ejections_enforced" in name
            or name.endswith(".outlier_detection.ejections_active")
            or name.endswith("upstream_rq_5xx")
        )
    }


@pytest.fixture(scope="module", autouse=True)
def no_ejections(system: System) -> Iterator[None]:
    """After every case of this module: no instance was ejected and none answered 5xx."""
    before, answered = ejections(system), system.stats("http.public.downstream_rq_")
    yield
    after, now = ejections(system), system.stats("http.public.downstream_rq_")

    def delta(kind: str) -> int:
        name = f"http.public.downstream_rq_{kind}"
        return now.get(name, 0) - answered.get(name, 0)

    record_fault(
        "hostile subjects, headers, page tokens, queries (HTTP)",
        {"ok": delta("2xx"), "failed": delta("4xx"), "unknown": delta("5xx")},
        "held" if after == before else f"EJECTED {after}",
    )
    assert after == before, "client faults counted against instances"


def order_body(request_id: str) -> dict[str, object]:
    return {"request_id": request_id, "line_items": [{"sku": "SKU-TEA", "quantity": 1}]}


# The user-id alphabet.

BAD_SUBJECTS = {
    "non-ASCII": "zoë",
    "newline": "a\nb",
    "CRLF": "a\r\nb",
    "NUL": "a\x00b",
    "space": "a b",
    "separator": "a,b",
    "too long": "u" * 129,
}


@pytest.mark.parametrize("subject", BAD_SUBJECTS.values(), ids=BAD_SUBJECTS.keys())
def test_a_subject_outside_the_alphabet_is_refused_with_401(system: System, subject: str) -> None:
    token = token_for(system, subject)
    answer = rest(system, "POST", "/v1/orders", token, body=order_body(uuid.uuid4().hex))
    assert answer.status == 401, answer
    assert "not a valid user id" in answer.text
    assert not any(leak in answer.text for leak in INTERNAL_TEXT), answer.text
    with (
        grpc.insecure_channel(system.public_target) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        OrderServiceStub(channel).ListOrders(
            rpc.ListOrdersRequest(), metadata=bearer(token), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_every_character_of_the_alphabet_is_accepted(system: System) -> None:
    answer = rest(system, "GET", "/v1/orders", token_for(system, "Az09._@+-"))
    assert answer.status == 200, answer


# Client faults that answered 5xx.


@pytest.mark.parametrize(
    "cursor", ["²", "9" * 30, "-1", " 1", "1e3"], ids=["²", "30 digits", "neg", "space", "exp"]
)
def test_a_forged_page_token_is_400(system: System, cursor: str) -> None:
    forged = base64.urlsafe_b64encode(f"v1:{cursor}".encode()).decode()
    answer = rest(system, "GET", f"/v1/orders?page_token={forged}", system.token("alice"))
    assert answer.status == 400, answer
    assert answer.body["details"][-1]["fieldViolations"][0]["field"] == "page_token"


@pytest.mark.parametrize("protocol", ["websocket", "h2c", "anything"])
def test_an_upgrade_request_is_refused_with_4xx(system: System, protocol: str) -> None:
    """An upgrade is refused; h2c alone is ignored by Envoy (the request is served as plain
    HTTP/1.1, which RFC 9113 allows), so it is answered normally."""
    # http.client, not urllib: urllib replaces the Connection header with its own.
    connection = http.client.HTTPConnection(system.public_target, timeout=20)
    try:
        connection.request(
            "GET",
            "/v1/orders",
            headers={
                "Authorization": f"Bearer {system.token('alice')}",
                "Connection": "Upgrade",
                "Upgrade": protocol,
            },
        )
        answer = connection.getresponse()
        status, text = answer.status, answer.read().decode(errors="replace")
    finally:
        connection.close()
    assert status == 200 if protocol == "h2c" else 400 <= status < 500, (status, text)
    assert not any(leak in text for leak in INTERNAL_TEXT), text


@pytest.mark.parametrize("deadline", ["-5S", "abc", "99999999999S", "1X"])
def test_a_malformed_grpc_timeout_is_ignored(system: System, deadline: str) -> None:
    token = system.token("alice")
    answer = rest(system, "GET", "/v1/orders", token, headers={"grpc-timeout": deadline})
    assert answer.status == 200, answer
    assert grpc_status(system, "ListOrders", token, ("grpc-timeout", deadline)) == "0"


def test_a_binary_header_that_is_not_base64_is_dropped(system: System) -> None:
    token = system.token("alice")
    assert grpc_status(system, "ListOrders", token, ("foo-bin", "!!!")) == "0"
    answer = rest(system, "GET", "/v1/orders", token, headers={"foo-bin": "!!!"})
    assert answer.status == 200, answer


def grpc_status(
    system: System,
    method: str,
    token: str,
    header: tuple[str, str],
    frame: bytes = b"\x00\x00\x00\x00\x00",  # one gRPC frame holding an empty message
) -> str:
    """The grpc-status of a request (by default empty) sent over raw HTTP/2 with one extra
    header, which the Python gRPC client would refuse to send (curl sends anything)."""
    return grpc_answer(system, method, token, header, frame)["grpc-status"]


def grpc_answer(
    system: System,
    method: str,
    token: str,
    header: tuple[str, str],
    frame: bytes,
    *,
    max_seconds: float = 15,
) -> dict[str, str]:
    """The response headers and trailers of such a request, by lower-case name; fails if
    none carries a grpc-status within `max_seconds`."""
    sent = run_command(
        [
            *("curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-D", "-"),
            *("--max-time", str(max_seconds), "--data-binary", "@-"),
            *("-H", "content-type: application/grpc", "-H", "te: trailers"),
            *("-H", f"authorization: Bearer {token}", "-H", f"{header[0]}: {header[1]}"),
            f"http://{system.public_target}/shop.order.v1.OrderService/{method}",
        ],
        expect=None,
        timeout=max_seconds + 15,
        stdin=frame,
    )
    answer = {}
    for line in sent.stdout.splitlines():
        name, _, value = line.partition(":")
        answer[name.strip().lower()] = value.strip()
    assert "grpc-status" in answer, f"no grpc-status in {max_seconds} s: {sent.stdout!r}"
    return answer


def test_client_faults_the_services_answer_5xx_eject_no_instance(
    make_system: SystemFactory,
) -> None:
    """Python gRPC answers an unknown grpc-encoding and a compressed frame without an
    encoding INTERNAL, and an unknown method UNIMPLEMENTED: a client's faults all the same.
    With two order instances, outlier detection counted them as the instance's 5xx and
    ejected one after 5 in a row. The gateway now answers an unknown encoding itself
    (UNIMPLEMENTED), but an instance must hold whoever answers."""
    system = make_system(instances=2)
    token = system.token("alice")
    empty, compressed = b"\x00\x00\x00\x00\x00", b"\x01\x00\x00\x00\x00"
    with grpc.insecure_channel(system.public_target) as channel:
        unknown = channel.unary_unary("/shop.order.v1.OrderService/NoSuchMethod")
        for _ in range(12):
            assert (
                grpc_status(system, "ListOrders", token, ("grpc-encoding", "bogus"), empty) == "12"
            )
            # gRPC's compression spec requires INTERNAL here; the gateway leaves it so.
            assert grpc_status(system, "ListOrders", token, ("x-a", "b"), compressed) == "13"
            with pytest.raises(grpc.RpcError) as refused:
                unknown(b"", metadata=bearer(token), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    enforced = system.stats("cluster.order.outlier_detection.ejections_enforced_total")
    assert enforced == {"cluster.order.outlier_detection.ejections_enforced_total": 0}, enforced
    assert system.healthy_endpoints()["order"] == 2


@pytest.mark.parametrize("encoding", ["bogus", "gzip", "deflate", "identity, gzip"])
def test_a_compressed_request_is_unimplemented_naming_identity(
    system: System, encoding: str
) -> None:
    """gRPC's compression spec: a compression the server does not take is UNIMPLEMENTED,
    with the encodings it does take in grpc-accept-encoding. Python gRPC answered INTERNAL
    ("Error parsing 'grpc-encoding' metadata"; gzip garbage: "Decompression failed"), and a
    REST request carrying the header 500 with that text."""
    token = system.token("alice")
    gzip_garbage = b"\x01\x00\x00\x00\x03abc"
    answer = grpc_answer(system, "ListOrders", token, ("grpc-encoding", encoding), gzip_garbage)
    assert (answer["grpc-status"], answer["grpc-accept-encoding"]) == ("12", "identity"), answer
    assert "uncompressed" in answer["grpc-message"]
    listed = rest(system, "GET", "/v1/orders", token, headers={"grpc-encoding": encoding})
    assert listed.status == 200, listed


def test_a_large_compressed_request_is_unimplemented_too(system: System) -> None:
    """The gateway answered a compressed request only once its body was in, buffered: a
    body over the stream's 64 KiB buffer was answered HTTP 413, which a gRPC client reads
    as UNKNOWN "Payload Too Large" (found by test_generated_input under `make chaos`). A
    real gRPC client, gzip on, with a message that stays large compressed."""
    noise = base64.b64encode(os.urandom(300_000)).decode()
    with (
        grpc.insecure_channel(system.public_target) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        OrderServiceStub(channel).ListOrders(
            rpc.ListOrdersRequest(page_token=noise),
            metadata=bearer(system.token("alice")),
            compression=grpc.Compression.Gzip,
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, refused.value
    assert "uncompressed" in (refused.value.details() or "")


TRUNCATED_BODIES = {
    "truncated frame": b"\x00\x00\x00\x00\x0a\x0a\x01",  # says 10 bytes, 2 follow
    "half a prefix": b"\x00\x00",
    "no message": b"",
}


@pytest.mark.parametrize("body", TRUNCATED_BODIES.values(), ids=TRUNCATED_BODIES.keys())
def test_a_body_not_of_one_whole_message_is_invalid_argument_at_once(
    system: System, body: bytes
) -> None:
    """A unary call whose body ends (END_STREAM) without one whole message: grpc.aio waited
    for the rest until Envoy's per-try timeout (12 s, three tries), answered UNAVAILABLE
    "upstream request timeout" and counted each try against the instance (504)."""
    timeouts = "cluster.order.upstream_rq_per_try_timeout"
    before = system.stats(timeouts).get(timeouts, 0)
    token = system.token("alice")
    answer = grpc_answer(system, "ListOrders", token, ("x-a", "b"), body, max_seconds=5)
    assert answer["grpc-status"] == "3", answer
    assert "ends without one whole gRPC message" in answer["grpc-message"]
    assert system.stats(timeouts).get(timeouts, 0) == before


def test_a_second_message_in_a_unary_call_is_ignored(system: System) -> None:
    """Two messages for a unary method are answered from the first at once, as grpc's own
    unary path does (gateway/README.md, "Compression and framing", says why)."""
    timeouts = "cluster.order.upstream_rq_per_try_timeout"
    before = system.stats(timeouts).get(timeouts, 0)
    answer = grpc_answer(
        system, "ListOrders", system.token("alice"), ("x-a", "b"), b"\x00" * 10, max_seconds=5
    )
    assert answer["grpc-status"] == "0", answer
    assert system.stats(timeouts).get(timeouts, 0) == before


# What a client may not steer.


def test_x_envoy_headers_from_a_client_are_not_obeyed(system: System) -> None:
    retries = system.stats("cluster.order.upstream_rq_retry").get(
        "cluster.order.upstream_rq_retry", 0
    )
    answer = rest(
        system,
        "POST",
        "/v1/orders",
        system.token("alice"),
        body=order_body(uuid.uuid4().hex),
        headers={
            "x-envoy-upstream-rq-timeout-ms": "1",
            "x-envoy-upstream-rq-per-try-timeout-ms": "1",
            "x-envoy-retry-on": "5xx,reset",
            "x-envoy-max-retries": "10",
        },
    )
    assert answer.status == 200, answer
    assert answer.body["order"]["state"] == "ORDER_STATE_CONFIRMED"
    after = system.stats("cluster.order.upstream_rq_retry").get(
        "cluster.order.upstream_rq_retry", 0
    )
    assert after == retries, "a client's x-envoy-retry-on made Envoy retry"


@pytest.mark.parametrize(
    "query", ["order_id=other", "orderId=other", "order%5Fid=other", "a=1&order_id="]
)
def test_a_query_parameter_naming_a_path_field_is_400(system: System, query: str) -> None:
    """The transcoder applies the query after the path: /v1/orders/A?order_id=B read B."""
    token = system.token("alice")
    created = rest(system, "POST", "/v1/orders", token, body=order_body(uuid.uuid4().hex))
    order_id = created.body["order"]["orderId"]
    answer = rest(system, "GET", f"/v1/orders/{order_id}?{query}", token)
    assert answer.status == 400, answer
    assert "names a field the path sets" in answer.text
    assert rest(system, "GET", f"/v1/orders/{order_id}", token).status == 200


def test_a_body_field_colliding_with_the_path_is_400(system: System) -> None:
    token = system.token("alice")
    answer = rest(system, "POST", "/v1/orders/abc:cancel", token, body={"order_id": "def"})
    assert answer.status == 400, answer


def test_x_envoy_headers_from_a_grpc_client_are_not_obeyed(system: System) -> None:
    """A gRPC caller with a valid token and a spoofed x-envoy header still gets its order."""
    with grpc.insecure_channel(system.public_target) as channel:
        response = OrderServiceStub(channel).CreateOrder(
            rpc.CreateOrderRequest(
                request_id=uuid.uuid4().hex,
                line_items=[order_pb2.LineItem(sku="SKU-TEA", quantity=1)],
            ),
            metadata=(
                *bearer(system.token("alice")),
                ("x-envoy-upstream-rq-timeout-ms", "1"),
            ),
            timeout=15,
        )
    assert response.order.state == order_pb2.ORDER_STATE_CONFIRMED
