"""`python -m services.payment`: run the payment service."""

import sys

from services.common import lean  # noqa: F401  (first: see its docstring)
from services.common.jetstream import with_jetstream
from services.common.server import main
from services.payment.config import PaymentConfig
from services.payment.service import create

# Its outbox relay publishes to JetStream (when --nats-url names a server).
sys.exit(main("payment", PaymentConfig, with_jetstream(create, "payment")))
