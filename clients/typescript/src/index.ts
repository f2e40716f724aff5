// The shopmesh TypeScript client: Connect clients for the three services over real gRPC
// (HTTP/2) through the Envoy gateway, with the bearer token on every call, and a helper
// that reads the stable reason out of an error. The messages and service descriptors are
// generated (src/gen, by protoc-gen-es); this file is the only hand-written part.
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ErrorInfoSchema, BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";
import { InventoryService } from "./gen/shop/inventory/v1/inventory_service_pb.js";
import { OrderService } from "./gen/shop/order/v1/order_service_pb.js";
import { PaymentService } from "./gen/shop/payment/v1/payment_service_pb.js";

export * from "./gen/shop/inventory/v1/inventory_service_pb.js";
export * from "./gen/shop/inventory/v1/inventory_pb.js";
export * from "./gen/shop/order/v1/order_service_pb.js";
export * from "./gen/shop/order/v1/order_pb.js";
export * from "./gen/shop/payment/v1/payment_service_pb.js";
export * from "./gen/shop/payment/v1/payment_pb.js";
export * from "./gen/shop/money/v1/money_pb.js";
// The event contracts: the envelope, the EventSpec option and each service's facts.
export * from "./gen/shop/events/v1/envelope_pb.js";
export * from "./gen/shop/events/v1/options_pb.js";
export * from "./gen/shop/inventory/v1/inventory_events_pb.js";
export * from "./gen/shop/order/v1/order_events_pb.js";
export * from "./gen/shop/payment/v1/payment_events_pb.js";
export { Code, ConnectError };

export interface ShopOptions {
  /** The gateway, e.g. "http://localhost:8080". */
  baseUrl: string;
  /** A JWT; sent as `authorization: Bearer <token>`. */
  token: string;
  /** Deadline of each call in milliseconds (default 10 s). */
  timeoutMs?: number;
}

export interface Shop {
  orders: Client<typeof OrderService>;
  inventory: Client<typeof InventoryService>;
  payment: Client<typeof PaymentService>;
}

/** Clients for the three services, sharing one HTTP/2 connection to the gateway. */
export function createShop(options: ShopOptions): Shop {
  const bearer: Interceptor = (next) => async (request) => {
    request.header.set("authorization", `Bearer ${options.token}`);
    return next(request);
  };
  const transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors: [bearer],
    defaultTimeoutMs: options.timeoutMs ?? 10_000,
  });
  return {
    orders: createClient(OrderService, transport),
    inventory: createClient(InventoryService, transport),
    payment: createClient(PaymentService, transport),
  };
}

/** What an error says, for callers that branch on it: the gRPC code, the stable reason
 * (google.rpc.ErrorInfo), its metadata, and the fields a bad request got wrong. */
export interface ShopError {
  code: Code;
  message: string;
  reason: string;
  metadata: Record<string, string>;
  fieldViolations: { field: string; description: string }[];
}

export function shopError(error: unknown): ShopError {
  const connect = ConnectError.from(error);
  const info = connect.findDetails(ErrorInfoSchema)[0];
  const bad = connect.findDetails(BadRequestSchema)[0];
  return {
    code: connect.code,
    message: connect.rawMessage,
    reason: info?.reason ?? "",
    metadata: info?.metadata ?? {},
    fieldViolations: (bad?.fieldViolations ?? []).map((v) => ({ field: v.field, description: v.description })),
  };
}
