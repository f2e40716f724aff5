// Runs against the live system: SHOPMESH_URL (Envoy's public listener) and SHOPMESH_TOKEN
// (a token for alice) come from tests/contract/test_typescript.py, which starts the system.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, createShop, OrderState, shopError } from "../src/index.js";

const baseUrl = process.env.SHOPMESH_URL ?? "http://localhost:8080";
const token = process.env.SHOPMESH_TOKEN ?? "";
const run = Date.now().toString(36);

test("gRPC through Envoy: create an order, then get it", async () => {
  const shop = createShop({ baseUrl, token });
  const created = await shop.orders.createOrder({
    requestId: `ts-${run}`,
    lineItems: [{ sku: "SKU-TEA", quantity: 2 }],
  });
  assert.equal(created.order?.state, OrderState.CONFIRMED);
  assert.equal(created.order?.total?.amountMinor, 900n); // int64 is a bigint
  const got = await shop.orders.getOrder({ orderId: created.order!.orderId });
  assert.equal(got.order?.requestId, `ts-${run}`);
  const product = await shop.inventory.getProduct({ sku: "SKU-TEA" });
  assert.equal(product.product?.sku, "SKU-TEA");
});

test("gRPC through Envoy: an error carries its reason and field violations", async () => {
  const shop = createShop({ baseUrl, token });
  await assert.rejects(
    shop.orders.createOrder({ requestId: `ts-bad-${run}`, lineItems: [{ sku: "SKU-TEA", quantity: 0 }] }),
    (error: unknown) => {
      const details = shopError(error);
      assert.equal(details.code, Code.InvalidArgument);
      assert.equal(details.reason, "INVALID_REQUEST");
      assert.deepEqual(details.fieldViolations.map((v) => v.field), ["line_items[0].quantity"]);
      return true;
    },
  );
  await assert.rejects(shop.orders.getOrder({ orderId: "nope" }), (error: unknown) => {
    assert.equal(shopError(error).reason, "ORDER_NOT_FOUND");
    assert.equal(shopError(error).code, Code.NotFound);
    return true;
  });
});

test("gRPC through Envoy: a missing token is UNAUTHENTICATED", async () => {
  const shop = createShop({ baseUrl, token: "not-a-token" });
  await assert.rejects(shop.inventory.getProduct({ sku: "SKU-TEA" }), (error: unknown) => {
    assert.equal(shopError(error).code, Code.Unauthenticated);
    return true;
  });
});

test("REST through Envoy with fetch", async () => {
  const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
  const created = await fetch(`${baseUrl}/v1/orders`, {
    method: "POST",
    headers,
    body: JSON.stringify({ request_id: `ts-rest-${run}`, line_items: [{ sku: "SKU-TEA", quantity: 1 }] }),
  });
  assert.equal(created.status, 200);
  const body = (await created.json()) as { order: { orderId: string; state: string; total: { amountMinor: string } } };
  assert.equal(body.order.state, "ORDER_STATE_CONFIRMED");
  assert.equal(body.order.total.amountMinor, "450"); // int64 is a string in JSON
  const missing = await fetch(`${baseUrl}/v1/orders/nope`, { headers });
  assert.equal(missing.status, 404);
  const error = (await missing.json()) as { details: { reason: string }[] };
  assert.equal(error.details[0].reason, "ORDER_NOT_FOUND");
});
