"""The services' NATS settings (services/common/config.py's nats_* and events_*, over
services/common/jetstream.py's JetStreamSettings): defaults from one place, bad values
refused at start with every problem listed, a bounded reconnect backoff, and the stream
compared with the server's copy only on the fields we set. In-process: no server."""

from __future__ import annotations

import dataclasses

import pytest
from nats.js.api import StreamConfig

from services.common.config import ConfigError, StoreConfig, load
from services.common.jetstream import (
    RECONNECT_FIRST_SECONDS,
    STREAM_FIELDS,
    JetStreamSettings,
    differences,
)
from services.order.config import OrderConfig


def problems(*flags: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as raised:
        load(OrderConfig, list(flags), {})
    return raised.value.problems


def test_a_service_runs_on_the_jetstream_defaults_and_no_nats_unless_told() -> None:
    config = load(OrderConfig, [], {})
    assert config.nats_url == ""
    assert config.jetstream == dataclasses.replace(JetStreamSettings(), url="")
    named = load(OrderConfig, ["--nats-url", "nats://127.0.0.1:4222"], {})
    assert named.jetstream.url == "nats://127.0.0.1:4222"
    assert named.jetstream.duplicate_window_seconds == 120.0


@pytest.mark.parametrize(
    "url", ["127.0.0.1:4222", "http://127.0.0.1:4222", "nats://127.0.0.1", "nats://:4222/x"]
)
def test_a_nats_url_that_is_not_nats_host_port_is_refused(url: str) -> None:
    assert problems("--nats-url", url) == (f"nats_url must be nats://HOST:PORT, got {url!r}",)


def test_limits_that_the_server_or_the_relay_could_not_keep_are_refused_all_at_once() -> None:
    """The relay publishes again after a timeout or a lost lease: that must fall inside
    the duplicates window, which the server keeps no longer than the events."""
    found = problems(
        *("--events-max-age-seconds", "60", "--events-duplicate-window-seconds", "5"),
        *("--outbox-publish-timeout-seconds", "6", "--outbox-lease-seconds", "30"),
        *("--events-max-bytes", "0"),
    )
    assert found == (
        "events_max_bytes must be > 0, got 0",
        "outbox_lease_seconds must be less than events_duplicate_window_seconds",
        "outbox_publish_timeout_seconds must be less than events_duplicate_window_seconds",
    )
    longer = ("--events-max-age-seconds", "60", "--events-duplicate-window-seconds", "90")
    assert problems(*longer) == (
        "events_duplicate_window_seconds must be at most events_max_age_seconds",
    )


def test_the_reconnect_backoff_doubles_up_to_its_bound() -> None:
    settings = JetStreamSettings(reconnect_max_seconds=1.0)
    delays = [settings.reconnect_delay(n) for n in range(8)]
    assert delays[0] == RECONNECT_FIRST_SECONDS
    assert delays == sorted(delays)
    assert max(delays) == 1.0 == delays[-1]


def test_the_stream_is_compared_on_the_fields_we_set_only() -> None:
    wanted = JetStreamSettings().stream_config()
    # What the server answers: its defaults filled in, times as floats.
    theirs = StreamConfig.from_response(
        {
            **wanted.as_dict(),
            "max_msgs": -1,
            "max_consumers": -1,
            "max_msg_size": -1,
            "sealed": False,
            "max_age": int(wanted.max_age * 1e9),  # type: ignore[operator]
            "duplicate_window": int(wanted.duplicate_window * 1e9),
        }
    )
    assert differences(wanted, theirs, STREAM_FIELDS) == []
    shorter = dataclasses.replace(theirs, max_age=86_400.0, subjects=["shop.>", "other.>"])
    assert differences(wanted, shorter, STREAM_FIELDS) == ["subjects", "max_age"]


def test_store_config_takes_its_jetstream_defaults_from_jetstream_settings() -> None:
    defaults, config = JetStreamSettings(), StoreConfig()
    assert config.outbox_publish_timeout_seconds == defaults.publish_timeout_seconds
    assert config.nats_reconnect_max_seconds == defaults.reconnect_max_seconds
    assert config.events_max_age_seconds == defaults.max_age_seconds
    assert config.events_max_bytes == defaults.max_bytes
    assert config.events_duplicate_window_seconds == defaults.duplicate_window_seconds
