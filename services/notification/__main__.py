"""`python -m services.notification`: run the notification service."""

import sys

from services.common.server import main
from services.notification.config import NotificationConfig
from services.notification.service import create

sys.exit(main("notification", NotificationConfig, create))
