"""Reporting's settings (flags or SHOP_* variables; see `python -m services.reporting -h`)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.config import StoreConfig, setting


@dataclass(frozen=True)
class ReportingConfig(StoreConfig):
    """Settings of the reporting service (the read model)."""

    db_path: pathlib.Path = setting(
        pathlib.Path("var/reporting.db"), "SQLite database file (when db_url is unset)"
    )
    inventory_target: str = setting(
        "127.0.0.1:50051", "gRPC address of the inventory service (product names)"
    )
    call_timeout_seconds: float = setting(2.0, "deadline of each GetProduct call to inventory")
    upstream_name: str = setting(
        "gateway",
        "under mutual TLS, the identity inventory_target's certificate must name (Envoy's internal"
        " listener: gateway)",
    )
    consumer_name: str = setting(
        "reporting", "the durable JetStream consumer whose position the read model keeps"
    )
    consumer_batch_size: int = setting(100, "events fetched and applied per transaction")
    consumer_wait_seconds: float = setting(
        1.0, "how long one fetch waits for events before it fetches again"
    )
    consumer_retry_seconds: float = setting(
        1.0, "the delay before a batch that could not be applied is delivered again"
    )
    consumer_ack_wait_seconds: float = setting(
        30.0,
        "how long the server waits for a batch's acks before it delivers it again (after a"
        " consumer was killed mid-batch)",
    )
    rebuild_consumer_inactive_seconds: float = setting(
        3600.0,
        "--rebuild's own durable consumer is removed by the server after this long unused"
        " (a rebuild that crashed before deleting it)",
    )
    lag_log_interval_seconds: float = setting(
        10.0, "how often the consumer logs its lag (events and seconds behind)"
    )

    def problems(self) -> list[str]:
        found = super().problems()
        for name in (
            "call_timeout_seconds",
            "consumer_batch_size",
            "consumer_wait_seconds",
            "consumer_retry_seconds",
            "consumer_ack_wait_seconds",
            "lag_log_interval_seconds",
            "rebuild_consumer_inactive_seconds",
        ):
            if getattr(self, name) <= 0:
                found.append(f"{name} must be > 0, got {getattr(self, name):g}")
        return found
