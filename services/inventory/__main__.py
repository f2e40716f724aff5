"""`python -m services.inventory`: run the inventory service."""

import sys

from services.common.server import main
from services.inventory.config import InventoryConfig
from services.inventory.service import create

sys.exit(main("inventory", InventoryConfig, create))
