"""Sends one message over SMTP to the configured server, off the event loop.

smtplib (the standard library) on a thread rather than aiosmtplib: one message at a time
per consumer, a connection per message, and a thread costs nothing next to the SMTP round
trips; it keeps the dependencies to the sink's aiosmtpd.
"""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

# What a send raises when the server is away, slow or refuses: all "not now, try again".
SEND_ERRORS = (smtplib.SMTPException, OSError, TimeoutError)


@dataclass(frozen=True)
class SmtpMailer:
    host: str
    port: int
    timeout_seconds: float = 10.0

    async def send(self, message: EmailMessage) -> None:
        """Returns once the server accepted the message for every recipient; raises one of
        SEND_ERRORS otherwise (it may or may not have been delivered)."""
        await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
            refused = smtp.send_message(message)
        if refused:  # some recipients refused, none here (one recipient per message)
            raise smtplib.SMTPRecipientsRefused(refused)
