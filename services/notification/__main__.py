"""`python -m services.notification`: run the notification service."""

import sys

from services.common import lean  # noqa: F401  (first: see its docstring)
from services.common.server import main
from services.notification.config import NotificationConfig
from services.notification.stream import create_on_jetstream

sys.exit(main("notification", NotificationConfig, create_on_jetstream))
