"""`python -m services.order`: run the order service."""

import sys

from services.common.server import main
from services.order.config import OrderConfig
from services.order.service import create

sys.exit(main("order", OrderConfig, create))
