"""The classic Python design shopmesh is compared with: FastAPI services on uvicorn,
calling each other with httpx (pooled connections) and JSON, a circuit breaker
(the `circuitbreaker` library) on the order service's outbound calls, and JWT
verification (PyJWT) in the order service.

To compare designs and not implementations, it keeps everything shopmesh does that is not
transport: the same SQLite stores and settings (WAL, synchronous=FULL), the same
idempotency (by request id and by order id), and the same saga orchestrator
(services.order.saga.SagaRunner, with its crash recovery), driven here through
HttpParticipants instead of gRPC. Run each service with uvicorn:

    BASELINE_DB=var/b-inventory.db BASELINE_SEED=services/demo_data.json \\
        uvicorn bench.baseline.inventory:app --port 8101
"""
