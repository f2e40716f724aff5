"""Watches one service in Consul's health API with blocking queries.

It keeps the last good endpoints through every Consul fault: an unreachable agent or an
error answer changes nothing, an index that goes backwards (a restarted agent) resets the
watch, and an empty answer never replaces a non-empty list (a restarted agent may not
have its registrations back yet; sending nothing would be an outage). py-consul is
synchronous, so each query runs in a thread with its own client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from gateway.controlplane.resources import Endpoint, endpoints_from_health
from services.common.registration import CONSUL_ERRORS, ConsulAccess, consul_client

log = logging.getLogger(__name__)

T = TypeVar("T")

BLOCKING_WAIT = "20s"
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0)


def in_daemon_thread(call: Callable[[], T]) -> asyncio.Future[T]:
    """Runs a blocking call in a daemon thread. Unlike asyncio.to_thread, a blocking query
    still waiting when the process stops does not hold up its exit for the query's wait."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = call(), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, daemon=True, name="consul-watch").start()
    return future


class ServiceWatch:
    def __init__(
        self,
        consul: ConsulAccess | str,
        service: str,
        publish: Callable[[str, list[Endpoint]], None],
    ) -> None:
        self._client = consul_client(consul)
        self._service = service
        self._publish = publish
        self.last_good: list[Endpoint] = []
        self._published = False

    async def run(self) -> None:
        index: int | None = None
        failures = 0
        while True:
            try:
                new_index, entries = await in_daemon_thread(
                    functools.partial(
                        self._client.health.service, self._service, index=index, wait=BLOCKING_WAIT
                    )
                )
            except CONSUL_ERRORS as error:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                if failures == 0:
                    log.warning(
                        "Consul query for %s failed (%s); keeping %d endpoints, retrying",
                        self._service,
                        type(error).__name__,
                        len(self.last_good),
                    )
                failures += 1
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("Consul answers again for %s", self._service)
                failures = 0
            new_index = int(new_index or 0)
            if index is not None and new_index < index:
                log.warning(
                    "Consul's index for %s went back (%d -> %d): agent restarted; watch reset",
                    self._service,
                    index,
                    new_index,
                )
            # An index of 0 or less is not a valid wait index: start over.
            index = new_index if new_index > 0 else None
            self.accept(entries)

    def accept(self, entries: list[dict]) -> None:  # type: ignore[type-arg]
        endpoints, problems = endpoints_from_health(entries)
        for problem in problems:
            log.error("ignoring an instance of %s: %s", self._service, problem)
        if not endpoints and self.last_good:
            log.warning(
                "Consul lists no instance of %s; keeping the last %d endpoints",
                self._service,
                len(self.last_good),
            )
            return
        # The first answer is published even when empty: Envoy waits for every cluster's
        # first assignment (up to its 15 s initial fetch timeout) before it serves, and a
        # service nobody runs (the consumers, with events off) would hold it that long.
        if endpoints != self.last_good or not self._published:
            self.last_good = endpoints
            self._published = True
            self._publish(self._service, endpoints)
