"""Leaving Consul is final: a registration still in flight when the instance stops cannot
land after its deregistration (which would leave a stopped instance in the catalog until
Consul's check expired it a minute later)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from services.common.registration import Instance, Registration


class SlowAgent:
    """An in-memory Consul agent whose first register call waits until it is released."""

    def __init__(self) -> None:
        self.registered: set[str] = set()
        self.register_started = threading.Event()
        self.release_register = threading.Event()
        self.register_done = threading.Event()
        self.agent = self
        self.service = self

    def services(self) -> dict[str, Any]:
        return {service_id: {} for service_id in self.registered}

    def register(self, name: str, service_id: str, **_: Any) -> None:
        self.register_started.set()
        self.release_register.wait(timeout=10)
        self.registered.add(service_id)
        self.register_done.set()

    def deregister(self, service_id: str) -> None:
        self.registered.discard(service_id)


async def test_a_register_in_flight_when_leaving_does_not_outlive_the_deregistration() -> None:
    registration = Registration("127.0.0.1:1", Instance("order", "127.0.0.1", 5000, "test"))
    agent = SlowAgent()
    registration._client = agent
    keeper = asyncio.create_task(registration.keep_registered(interval=60))
    assert await asyncio.to_thread(agent.register_started.wait, 10)

    keeper.cancel()  # as the server does on SIGTERM; the register call runs on in its thread
    leaving = asyncio.create_task(registration.leave())
    await asyncio.sleep(0.1)  # let leave() reach Consul first, as it may in real life
    agent.release_register.set()
    await asyncio.wait_for(leaving, timeout=10)
    assert await asyncio.to_thread(agent.register_done.wait, 10)

    assert agent.registered == set()
    registration.register()  # and nothing registers it again
    assert agent.registered == set()
