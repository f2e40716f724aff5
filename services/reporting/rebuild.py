"""`python -m services.reporting --rebuild`: build the read model into an empty database
from the stream's first event, then exit.

It uses a new durable consumer of its own (`<consumer_name>-rebuild-<random>`, deliver
policy ALL, so it starts at the stream's first stored event; deleted when done, and if
the rebuild dies first, removed by the server once unused for
rebuild_consumer_inactive_seconds, an hour by default), reads up
to the stream's last sequence as it was when the rebuild began, and leaves the live
service's consumer alone. What it can rebuild is what the stream still holds: events
older than the stream's max age (events_max_age_seconds) are gone (docs/reporting.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import Sequence

import uvloop

from services.common import logs
from services.common.config import ConfigError, load
from services.common.server import startup_errors
from services.reporting import consumer
from services.reporting.config import ReportingConfig
from services.reporting.names import InventoryNames
from services.reporting.nats_source import open_source
from services.reporting.service import open_store

log = logging.getLogger(__name__)


class NotEmpty(Exception):
    """The rebuild's database already holds a read model."""


async def rebuild(config: ReportingConfig, ready_seconds: float = 30.0) -> int:
    """Rebuilds into config's database; returns the stream sequence it rebuilt up to."""
    store = await open_store(config)
    if (await store.state()).applied_sequence:
        await store.aclose()
        raise NotEmpty(f"{config.db_location} already holds a read model: rebuild into a new one")
    names = InventoryNames(
        config.inventory_target, config.call_timeout_seconds, config.tls_files, config.upstream_name
    )
    # Deleted at the end; if the rebuild dies first, the server removes it once unused.
    source = await open_source(
        config,
        f"{config.consumer_name}-rebuild-{uuid.uuid4().hex[:12]}",
        inactive_threshold_seconds=config.rebuild_consumer_inactive_seconds,
    )
    try:
        if not await source.connection.wait_ready(ready_seconds):
            raise ConnectionError(f"NATS at {config.nats_url} is not ready")
        target = await source.last_sequence()
        if target is None:
            raise ConnectionError("NATS did not say the stream's last sequence")
        log.info("rebuilding the read model from the stream's start up to sequence %d", target)
        await consumer.run(
            consumer.Projector(store, names, retry_delay_seconds=config.consumer_retry_seconds),
            source,
            batch=config.consumer_batch_size,
            wait_seconds=config.consumer_wait_seconds,
            lag_log_interval_seconds=config.lag_log_interval_seconds,
            stop=asyncio.Event(),
            until_sequence=target,
        )
        state = await store.state()
        log.info(
            "rebuilt up to sequence %d: %d applied, %d skipped, %d parked",
            state.applied_sequence,
            state.applied,
            state.skipped,
            state.parked,
        )
        return state.applied_sequence
    finally:
        await source.delete_consumer()
        await source.close()
        await names.close()
        await store.aclose()


def main(argv: Sequence[str]) -> int:
    """The --rebuild entry point: 0 once rebuilt, 1 if it could not be, 2 for bad settings."""
    try:
        config = load(
            ReportingConfig, argv, os.environ, prog="python -m services.reporting --rebuild"
        )
    except ConfigError as error:
        print(f"reporting --rebuild: {error}", file=sys.stderr)
        return 2
    if not config.nats_url:
        print("reporting --rebuild: needs --nats-url, the stream it rebuilds from", file=sys.stderr)
        return 2
    logs.setup("reporting-rebuild", config.log_level)
    try:
        uvloop.run(rebuild(config))
    except Exception as error:
        if not isinstance(error, (NotEmpty, *startup_errors())):  # the database, migrations
            raise
        log.error("rebuild failed: %s", error)
        return 1
    return 0
