"""TEST ONLY fault hooks of the payment service, off unless a test sets them
(PaymentConfig.lose_replies, delay_seconds, flaky_calls). They make this process the
"slow", "failing" or "reply lost" participant the fault tests need, with effects placed
exactly where a network fault would put them."""

from __future__ import annotations

import asyncio

from services.common.errors import ErrorKind, ServiceError

MUTATING = ("AuthorizePayment", "CapturePayment", "VoidPayment")


class Faults:
    def __init__(
        self, lose_replies: str = "", delay_seconds: float = 0.0, flaky_calls: int = 0
    ) -> None:
        method, _, count = lose_replies.partition(":")
        self._lose_method, self._lose_left = method, int(count or 0)
        self._delay = delay_seconds
        self._flaky_left = 2 * flaky_calls  # of the first 2N calls, every second one fails

    async def before(self, method: str) -> None:
        """Before the call does anything: a slow instance waits; a flaky one fails half its
        calls with UNAVAILABLE (nothing was done, so a retry is safe)."""
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._flaky_left > 0:
            self._flaky_left -= 1
            if self._flaky_left % 2:
                raise ServiceError(ErrorKind.UNAVAILABLE, "FLAKY", "test fault: unavailable")

    def after_commit(self, method: str) -> None:
        """After the call took effect: its reply is lost (the caller sees UNAVAILABLE)."""
        if method == self._lose_method and self._lose_left > 0:
            self._lose_left -= 1
            raise ServiceError(ErrorKind.UNAVAILABLE, "REPLY_LOST", "test fault: reply lost")
