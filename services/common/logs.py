"""Logging set-up: one plain line per event, to stderr, tagged with the service name."""

from __future__ import annotations

import logging


def setup(service: str, level: str) -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
    # grpc's own asyncio logger reports every aborted call at ERROR; we log our errors.
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.WARNING)
    # yoyo logs each statement of a migration at INFO; migrations.apply logs what it applied.
    logging.getLogger("yoyo").setLevel(logging.WARNING)
