"""`python -m services.order`: run the order service."""

import sys

from services.common import lean  # noqa: F401  (first: see its docstring)
from services.common.jetstream import with_jetstream
from services.common.server import main
from services.order.config import OrderConfig
from services.order.service import create

# Its outbox relay publishes to JetStream (when --nats-url names a server).
sys.exit(main("order", OrderConfig, with_jetstream(create, "order")))
