"""The baseline peer of the benchmark (bench/baseline, FastAPI + httpx) is a working
system before it is measured: one order confirmed, one out-of-stock order cancelled with
nothing held, a bad token refused, a repeated request id placing nothing twice."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from bench.baseline.run import Baseline, start
from shopmesh import tokens
from tests.system_helpers import write_system_seed


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Baseline, str]]:
    workdir = tmp_path_factory.mktemp("baseline")
    keys = tokens.ensure_keys(workdir / "jwt")
    started = start(workdir, write_system_seed(workdir / "seed.json"), keys.jwks)
    yield started, tokens.issue("rich", directory=workdir / "jwt")
    started.stop()


def call(url: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers=headers, method="POST" if data else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_baseline_places_and_refuses_orders(baseline: tuple[Baseline, str]) -> None:
    system, token = baseline
    order = {"request_id": "b1", "line_items": [{"sku": "SKU-MUG", "quantity": 2}]}
    status, placed = call(f"{system.url('order')}/v1/orders", token, order)
    assert status == 200, placed
    assert (placed["order"]["state"], placed["order"]["total_minor"]) == ("CONFIRMED", 2598)
    again = call(f"{system.url('order')}/v1/orders", token, order)[1]
    assert again["order"]["order_id"] == placed["order"]["order_id"]
    status, refused = call(
        f"{system.url('order')}/v1/orders",
        token,
        {"request_id": "b2", "line_items": [{"sku": "SKU-LAST", "quantity": 2}]},
    )
    assert (status, refused["reason"]) == (400, "OUT_OF_STOCK")
    assert call(f"{system.url('inventory')}/v1/products/SKU-MUG")[1] == {
        "sku": "SKU-MUG",
        "available": 48,
        "held": 0,
        "sold": 2,
        "price_minor": 1299,
    }
    assert call(f"{system.url('inventory')}/v1/products/SKU-LAST")[1]["held"] == 0
    assert call(f"{system.url('payment')}/v1/accounts/rich")[1]["available"] == 100_000_000 - 2598
    assert call(f"{system.url('order')}/v1/orders", "not-a-token", order)[0] == 401
