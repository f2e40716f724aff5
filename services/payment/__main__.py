"""`python -m services.payment`: run the payment service."""

import sys

from services.common.server import main
from services.payment.config import PaymentConfig
from services.payment.service import create

sys.exit(main("payment", PaymentConfig, create))
