"""Notification's settings (flags or SHOP_* variables; see `python -m services.notification -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import StoreConfig, is_host_port, setting
from services.notification.consumer import ConsumerSettings

DEFAULTS = ConsumerSettings()


@dataclass(frozen=True)
class NotificationConfig(StoreConfig):
    """Settings of the notification service. Its consumer of order events runs only with
    nats_url set (the durable consumer `notification` on the stream SHOP_EVENTS)."""

    db_path: pathlib.Path = setting(
        pathlib.Path("var/notification.db"), "SQLite database file (when db_url is unset)"
    )
    smtp: str = setting(
        "127.0.0.1:2525",
        "host:port of the SMTP server the notifications are sent through (no TLS, no login:"
        " a local relay or the sink `shopmesh run` starts)",
    )
    smtp_timeout_seconds: float = setting(10.0, "how long one message's SMTP exchange may take")
    mail_from: str = setting(DEFAULTS.sender, "the From of every notification")
    send_max_attempts: int = setting(
        DEFAULTS.max_attempts,
        "sends of one notification tried at most while the SMTP server is away or refuses;"
        " then it is recorded FAILED",
    )
    send_retry_first_seconds: float = setting(
        DEFAULTS.retry_first_seconds,
        "the redelivery delay after a notification's first failed send; it doubles",
    )
    send_retry_max_seconds: float = setting(
        DEFAULTS.retry_max_seconds, "the longest redelivery delay after a failed send"
    )
    consumer_batch_size: int = setting(DEFAULTS.batch, "order events fetched at once")
    consumer_ack_wait_seconds: float = setting(
        30.0,
        "how long the server waits for an event's ack before it delivers it again (a"
        " consumer killed between send and mark sends again after this)",
    )
    exit_after_sends: int = setting(
        0,
        "TEST ONLY: after the Nth message is sent and before it is marked sent, the process"
        " exits at once (as a kill -9 there would)",
    )

    @property
    def consumer_settings(self) -> ConsumerSettings:
        return ConsumerSettings(
            sender=self.mail_from,
            max_attempts=self.send_max_attempts,
            retry_first_seconds=self.send_retry_first_seconds,
            retry_max_seconds=self.send_retry_max_seconds,
            batch=self.consumer_batch_size,
        )

    @property
    def smtp_host(self) -> str:
        return self.smtp.rpartition(":")[0]

    @property
    def smtp_port(self) -> int:
        return int(self.smtp.rpartition(":")[2])

    def problems(self) -> list[str]:
        found = super().problems()
        if not is_host_port(self.smtp):
            found.append(f"smtp must be host:port, got {self.smtp!r}")
        for name in (
            "smtp_timeout_seconds",
            "send_max_attempts",
            "send_retry_first_seconds",
            "send_retry_max_seconds",
            "consumer_batch_size",
            "consumer_ack_wait_seconds",
        ):
            if getattr(self, name) <= 0:
                found.append(f"{name} must be > 0, got {getattr(self, name):g}")
        if self.exit_after_sends < 0:
            found.append("exit_after_sends must be >= 0")
        return found
