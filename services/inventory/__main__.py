"""`python -m services.inventory`: run the inventory service."""

import sys

from services.common import lean  # noqa: F401  (first: see its docstring)
from services.common.jetstream import with_jetstream
from services.common.server import main
from services.inventory.config import InventoryConfig
from services.inventory.service import create

# Its outbox relay publishes to JetStream (when --nats-url names a server).
sys.exit(main("inventory", InventoryConfig, with_jetstream(create, "inventory")))
