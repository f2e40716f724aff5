"""The services' link to NATS JetStream: one connection that keeps itself up, the stream
and durable consumers declared on it, a publisher that waits for the server's PubAck, and
a pull consumer.

- **The connection** (`JetStreamConnection`) comes up in the background and never takes
  the service down: `start` returns at once; the client (nats-py) retries a first
  connection every `reconnect_max_seconds` and a lost one after a backoff that starts at
  `RECONNECT_FIRST_SECONDS` and doubles to `reconnect_max_seconds`, for ever. After each
  (re)connection it declares the stream and the consumers again (a server that lost its
  store gets them back); until that is done, `ready` is false.
- **Declaring** is idempotent: the stream `SHOP_EVENTS` (subjects `shop.>`, file storage,
  limits retention) and each durable pull consumer is created if missing, updated if a
  field we set differs, and left alone if not, so a second start changes nothing. Every
  service declares the stream from the same settings (`JetStreamSettings`): one given
  other limits would update it back and forth at each start. Written here because
  nats-py 2.16 has add and update calls but no create-or-update, and the server fills in
  defaults for the fields we leave out, so only ours are compared.
- **Publishing** (`JetStreamPublisher.publish`) sets `Nats-Msg-Id`, so a re-publish
  inside the duplicates window is stored once (the PubAck says `duplicate`), and returns
  only once the server acknowledged the message as stored; anything else (not connected,
  no ack within the timeout, an error) raises `PublishError`. It never waits longer than
  the timeout.
- **Consuming** (`PullConsumer`): fetch a batch of a durable pull consumer; each message
  is acked after its effect, nak'ed (redelivered, after a delay) or terminated (never
  again: a poison message).

What the server keeps, and when it fsyncs (2.9.10: every 2 minutes, not configurable),
is in docs/events-delivery.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import math
import pathlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import nats
import nats.errors
import nats.js
import nats.js.errors
from nats.aio.client import Client
from nats.aio.client import Server as PoolServer
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from services.common import tls

log = logging.getLogger(__name__)

STREAM = "SHOP_EVENTS"
"""The one stream of every event (docs/events-delivery.md)."""
SUBJECTS = ("shop.>",)
"""Its subjects: an event's subject is its type, `shop.<domain>.v<N>.<Fact>`."""
MSG_ID_HEADER = "Nats-Msg-Id"
RECONNECT_FIRST_SECONDS = 0.05
"""The wait before the first reconnect attempt after a lost connection; it doubles."""

# What the client's calls raise when the server is away or refuses: all of them mean
# "not now", never a bug of ours.
NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


@dataclass(frozen=True)
class JetStreamSettings:
    """How a service uses NATS; the defaults are what services run with
    (services.common.config's nats_* and events_* settings set them)."""

    url: str = "nats://127.0.0.1:4222"
    """The server, nats://HOST:PORT."""
    max_age_seconds: float = 30 * 86_400.0
    """How long the stream keeps an event: the horizon of a consumer rebuilt from the
    stream's start (the reporting read model), which must not be longer."""
    max_bytes: int = 1024**3
    """The most the stream stores; past it the oldest events go first (limits retention),
    which shortens the horizon: 1 GiB is about a million events of 1 KiB."""
    duplicate_window_seconds: float = 120.0
    """How long the server remembers a `Nats-Msg-Id`: a re-publish within it is dropped.
    The outbox relay's lease is much shorter, so a re-publish after a crash lands in it."""
    publish_timeout_seconds: float = 2.0
    """How long a publish waits for its PubAck before it fails (a local server answers in
    about a millisecond)."""
    reconnect_max_seconds: float = 1.0
    """The longest wait between two connection attempts."""
    connect_timeout_seconds: float = 2.0
    """How long one connection attempt may take."""
    api_timeout_seconds: float = 5.0
    """How long one JetStream API call (declaring the stream or a consumer) may take."""
    declare_retry_max_seconds: float = 30.0
    """The longest wait before declaring again after the server refused (a stream or
    consumer it will not change, say): one log line each time, so not too often."""
    name: str = ""
    """The client's name, shown in the server's monitoring (`/connz`)."""
    tls_dir: pathlib.Path | None = None
    """With a tls:// url: the certificate directory the client presents (its identity,
    which the server maps to its permissions: shopmesh/nats_security.py); the server's
    certificate must name `nats`."""

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=STREAM,
            description="every event of shopmesh; subject = the event's type",
            subjects=list(SUBJECTS),
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_seconds,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_seconds,
            num_replicas=1,
        )

    def reconnect_delay(self, attempts: int) -> float:
        """The wait before reconnect attempt `attempts + 1` (0: the first)."""
        return min(RECONNECT_FIRST_SECONDS * 2.0**attempts, self.reconnect_max_seconds)

    def declare_retry_delay(self, failures: int) -> float:
        """The wait before declaring again after `failures + 1` refusals in a row."""
        return min(RECONNECT_FIRST_SECONDS * 2.0**failures, self.declare_retry_max_seconds)


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer of the stream, as its service declares it at start."""

    durable: str
    """Its name (the consuming service's): the server keeps its position under it."""
    filter_subject: str = ""
    """Only subjects matching this (e.g. `shop.order.>`); empty: every event."""
    ack_wait_seconds: float = 30.0
    """A delivered message not acked within this is delivered again."""
    max_deliver: int = -1
    """Deliveries of one message at most; -1: no limit (poison is terminated instead)."""
    max_ack_pending: int = 1000
    """Messages delivered and not yet acked at most; the server holds back the rest."""
    inactive_threshold_seconds: float | None = None
    """The server removes the durable once nobody has fetched from it for this long (a
    crashed rebuild's consumer); None: it is kept until deleted."""

    def config(self) -> ConsumerConfig:
        # deliver_policy ALL: a new durable starts at the stream's first event, which is
        # what a consumer that builds its state from the stream needs.
        return ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.filter_subject or None,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_seconds,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            inactive_threshold=self.inactive_threshold_seconds,
        )


class Declared(enum.StrEnum):
    """What declaring did."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, float) or isinstance(theirs, float):
        return theirs is not None and ours is not None and math.isclose(ours, theirs)
    if isinstance(ours, list | tuple) and isinstance(theirs, list | tuple):
        return sorted(ours) == sorted(theirs)
    return bool(ours == theirs)


# The fields of each config we set, compared with what the server has (it fills in the
# others with its defaults, which must not read as a difference).
STREAM_FIELDS = (
    "subjects",
    "storage",
    "retention",
    "discard",
    "max_age",
    "max_bytes",
    "duplicate_window",
    "num_replicas",
)
CONSUMER_FIELDS = (
    "filter_subject",
    "ack_policy",
    "deliver_policy",
    "ack_wait",
    "max_deliver",
    "max_ack_pending",
)


def differences(ours: Any, theirs: Any, names: Sequence[str]) -> list[str]:
    """The fields among `names` in which the server's config differs from ours."""
    return [n for n in names if not _same(getattr(ours, n), getattr(theirs, n))]


async def declare_stream(js: nats.js.JetStreamContext, settings: JetStreamSettings) -> Declared:
    """Creates the stream, or updates it to `settings` where it differs; idempotent.
    Raises the client's errors (NATS_ERRORS) as they come: the caller retries."""
    wanted = settings.stream_config()
    try:
        info = await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(wanted)
        log.info("created stream %s", STREAM)
        return Declared.CREATED
    changed = differences(wanted, info.config, STREAM_FIELDS)
    if not changed:
        return Declared.UNCHANGED
    await js.update_stream(wanted)
    log.info("updated stream %s: %s", STREAM, ", ".join(changed))
    return Declared.UPDATED


async def declare_consumer(js: nats.js.JetStreamContext, spec: ConsumerSpec) -> Declared:
    """Creates the durable consumer, or updates it where it differs; idempotent. The
    server refuses to change its ack or deliver policy (an APIError): that takes a new
    durable name."""
    wanted = spec.config()
    try:
        info = await js.consumer_info(STREAM, spec.durable)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(STREAM, wanted)
        log.info("created consumer %s on %s", spec.durable, STREAM)
        return Declared.CREATED
    changed = differences(wanted, info.config, CONSUMER_FIELDS)
    if not changed:
        return Declared.UNCHANGED
    # The same create call updates a durable's updatable fields (nats-server 2.9).
    await js.add_consumer(STREAM, wanted)
    log.info("updated consumer %s on %s: %s", spec.durable, STREAM, ", ".join(changed))
    return Declared.UPDATED


NATS_IDENTITY = "nats"
"""The name the NATS server's certificate must carry (its DNS SAN, which nats-py checks)."""


class ClientCertificate:
    """The TLS context a connection presents its certificate with. The connection keeps
    the certificate it began with; a reconnection takes the renewed one (the context is
    loaded again when the files changed)."""

    def __init__(self, directory: pathlib.Path) -> None:
        self._files = tls.CertificateFiles(directory)
        self._stamp = self._files.stamp()
        self.context = ssl.create_default_context(cafile=directory / "ca.pem")
        self._load()

    def _load(self) -> None:
        directory = self._files.directory
        self.context.load_cert_chain(directory / "cert.pem", directory / "key.pem")

    def reload_if_renewed(self) -> None:
        try:
            stamp = self._files.stamp()
            if stamp != self._stamp:
                self._files.read()  # whole (the key is the certificate's), or skipped
                self._load()
                self._stamp = stamp
                log.info("NATS: reconnecting with the renewed certificate")
        except (tls.TLSError, OSError, ssl.SSLError) as error:
            log.warning("NATS: keeping the certificate in use: %s", error)


class JetStreamConnection:
    """One connection to NATS for a service, kept up in the background, with the stream
    and the service's consumers declared on it after every (re)connection."""

    def __init__(self, settings: JetStreamSettings, consumers: Sequence[ConsumerSpec] = ()) -> None:
        self.settings = settings
        self.consumers = tuple(consumers)
        self.client = Client()
        self.js = self.client.jetstream(timeout=settings.api_timeout_seconds)
        """The JetStream API on the client (usable once `ready`)."""
        self._task: asyncio.Task[None] | None = None
        self._declared = asyncio.Event()
        self._redeclare = asyncio.Event()
        self._outage_logged = False
        self._tls = ClientCertificate(settings.tls_dir) if settings.tls_dir is not None else None

    @property
    def ready(self) -> bool:
        """Connected, with the stream and consumers declared since the connection began."""
        return self._declared.is_set() and self.client.is_connected

    async def start(self) -> None:
        """Starts connecting in the background; returns at once, NATS up or not."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jetstream-connection")
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        # Only a bug ends it (NATS's own failures are retried): say so, loudly.
        if not task.cancelled() and task.exception() is not None:
            log.error("the NATS connection task stopped", exc_info=task.exception())

    async def wait_ready(self, wait_seconds: float) -> bool:
        """Whether the connection is ready within `wait_seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while not self.ready:
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._declared.wait(), left)
            except TimeoutError:
                return False
            if not self.ready:  # declared, but the connection just went
                await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        """Stops reconnecting and closes the connection (pending acks are flushed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._declared.clear()
        if not self.client.is_closed:
            with contextlib.suppress(*NATS_ERRORS):
                await self.client.close()

    async def _run(self) -> None:
        secure: dict[str, Any] = {}
        if self._tls is not None:
            secure = {"tls": self._tls.context, "tls_hostname": tls.dns_name(NATS_IDENTITY)}
        await self.client.connect(
            self.settings.url,
            **secure,
            name=self.settings.name or None,
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # for ever
            # Between first attempts (a reconnect uses the handler's backoff instead).
            reconnect_time_wait=self.settings.reconnect_max_seconds,  # type: ignore[arg-type]
            connect_timeout=self.settings.connect_timeout_seconds,  # type: ignore[arg-type]
            reconnect_to_server_handler=self._next_server,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        log.info("connected to NATS at %s", self.settings.url)
        self._outage_logged = False
        self._redeclare.set()
        failures = 0
        while True:
            await self._redeclare.wait()
            self._redeclare.clear()
            try:
                await declare_stream(self.js, self.settings)
                for spec in self.consumers:
                    await declare_consumer(self.js, spec)
            except NATS_ERRORS as error:
                if not self.client.is_connected:
                    continue  # the reconnection will ask again
                delay = self.settings.declare_retry_delay(failures)
                failures += 1
                log.warning(
                    "could not declare stream %s and consumers (%s: %s); again in %.2f s",
                    STREAM,
                    type(error).__name__,
                    error,
                    delay,
                )
                await asyncio.sleep(delay)
                self._redeclare.set()
                continue
            failures = 0
            if self.client.is_connected:
                self._declared.set()

    def _next_server(
        self, servers: list[PoolServer], info: dict[str, Any]
    ) -> tuple[PoolServer | None, float]:
        # The client calls this before each reconnect attempt: the one server, after a
        # bounded exponential backoff; with the certificate renewed since, if it was.
        if self._tls is not None:
            self._tls.reload_if_renewed()
        server = servers[0]
        return server, self.settings.reconnect_delay(server.reconnects)

    async def _on_error(self, error: Exception) -> None:
        # Every failed attempt reports here; one line per outage is enough.
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "NATS at %s unreachable (%s: %s); retrying every %g s at most",
                self.settings.url,
                type(error).__name__,
                error,
                self.settings.reconnect_max_seconds,
            )
        else:
            log.debug("NATS: %s: %s", type(error).__name__, error)

    async def _on_disconnected(self) -> None:
        self._declared.clear()
        if not self.client.is_closed:
            log.warning("disconnected from NATS at %s; reconnecting", self.settings.url)

    async def _on_reconnected(self) -> None:
        self._outage_logged = False
        log.info("reconnected to NATS at %s", self.settings.url)
        self._redeclare.set()


class PublishError(Exception):
    """The server did not acknowledge the message as stored: it may or may not have it,
    so the caller publishes it again (with the same message id)."""


class JetStreamPublisher:
    """Publishes to the stream and waits for the PubAck: the outbox relay's `Publisher`."""

    def __init__(self, connection: JetStreamConnection) -> None:
        self.connection = connection
        self.timeout = connection.settings.publish_timeout_seconds
        self.duplicates = 0
        """Publishes the server dropped as a re-publish of a message id it had."""

    async def publish(self, subject: str, msg_id: str, data: bytes) -> None:
        """Stores `data` on `subject` with `Nats-Msg-Id` = `msg_id`; returns once the
        server acknowledged it (a duplicate inside the window counts as stored), raises
        PublishError otherwise, within the publish timeout."""
        if not self.connection.ready:
            raise PublishError(f"not connected to NATS at {self.connection.settings.url}")
        try:
            # The outer timeout also bounds what the client itself might wait on (a full
            # write buffer while the connection is going).
            async with asyncio.timeout(self.timeout):
                ack = await self.connection.js.publish(
                    subject,
                    data,
                    timeout=self.timeout,
                    stream=STREAM,
                    headers={MSG_ID_HEADER: msg_id},
                )
        except NATS_ERRORS as error:
            kind = "no PubAck" if isinstance(error, asyncio.TimeoutError) else "failed"
            raise PublishError(
                f"publish of {msg_id} to {subject}: {kind} ({type(error).__name__}: {error})"
            ) from error
        if ack.stream != STREAM:  # the expected-stream header makes the server check it
            raise PublishError(f"publish of {msg_id} landed in stream {ack.stream!r}")
        if ack.duplicate:
            self.duplicates += 1
            log.debug("%s on %s was a duplicate (stream seq %d)", msg_id, subject, ack.seq)

    async def close(self) -> None:
        """Closes the connection (for a publisher made by `open_publisher`)."""
        await self.connection.close()


class _WithJetStream(Protocol):
    """A service's config: StoreConfig's `jetstream` (not imported: config imports us)."""

    @property
    def jetstream(self) -> JetStreamSettings: ...


C = TypeVar("C", bound=_WithJetStream)
S = TypeVar("S")


def with_jetstream(
    create: Callable[[C, Callable[[str], Awaitable[JetStreamPublisher]]], Awaitable[S]],
    name: str,
) -> Callable[[C], Awaitable[S]]:
    """A producing service's `create(config, publishers)`, given publishers on JetStream
    (one connection each, named `name` in the server's `/connz`, with the config's stream
    settings): what its process runs, so its outbox relay publishes when `nats_url` is
    set. The connection lasts as long as the process."""

    @functools.wraps(create)  # its module names the service's package (server.main)
    async def created(config: C) -> S:
        settings = dataclasses.replace(config.jetstream, name=name)

        async def publishers(url: str) -> JetStreamPublisher:
            return await open_publisher(dataclasses.replace(settings, url=url))

        return await create(config, publishers)

    return created


async def open_publisher(settings: JetStreamSettings) -> JetStreamPublisher:
    """A publisher on a connection of its own, connecting in the background (publishes
    fail until it is ready); `close` it when the service stops. Shaped for the outbox
    relay's publisher factory: `lambda url: open_publisher(replace(settings, url=url))`."""
    connection = JetStreamConnection(settings)
    await connection.start()
    return JetStreamPublisher(connection)


@dataclass(frozen=True)
class Delivery:
    """One message delivered by a pull consumer; settle it with exactly one of ack, nak
    or term."""

    msg: Msg

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def msg_id(self) -> str:
        return (self.msg.headers or {}).get(MSG_ID_HEADER, "")

    @property
    def stream_sequence(self) -> int:
        return int(self.msg.metadata.sequence.stream)

    @property
    def deliveries(self) -> int:
        """How many times the server has delivered it (1 the first time)."""
        return int(self.msg.metadata.num_delivered)

    async def ack(self) -> None:
        """Done with it: never delivered to this consumer again. Sent without waiting
        for an answer: an ack lost on the way redelivers the message after ack_wait,
        which a consumer dedups by event id anyway."""
        await self.msg.ack()

    async def nak(self, delay_seconds: float | None = None) -> None:
        """Not now: deliver it again, after `delay_seconds` (None: at once)."""
        await self.msg.nak(delay=delay_seconds)

    async def term(self) -> None:
        """Never again (a poison message): the server drops it for this consumer."""
        await self.msg.term()


class PullConsumer:
    """Fetches batches of a durable pull consumer declared by the connection."""

    def __init__(self, connection: JetStreamConnection, durable: str) -> None:
        if durable not in {spec.durable for spec in connection.consumers}:
            raise ValueError(f"consumer {durable!r} is not declared by this connection")
        self.connection = connection
        self.durable = durable
        self._subscription: nats.js.JetStreamContext.PullSubscription | None = None

    async def fetch(self, batch: int, wait_seconds: float) -> list[Delivery]:
        """Up to `batch` messages, waiting at most about `wait_seconds` for them; [] if
        none came, or NATS is away (the caller just fetches again)."""
        if not await self.connection.wait_ready(wait_seconds):
            return []
        if self._subscription is None:
            # The subscription's inbox is re-subscribed by the client after a reconnect.
            self._subscription = await self.connection.js.pull_subscribe_bind(
                durable=self.durable, stream=STREAM
            )
        try:
            msgs = await self._subscription.fetch(batch, timeout=wait_seconds)
        except NATS_ERRORS as error:
            if not isinstance(error, asyncio.TimeoutError):
                log.warning(
                    "fetch from %s failed: %s: %s", self.durable, type(error).__name__, error
                )
            return []
        return [Delivery(msg) for msg in msgs]

    async def close(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._subscription.unsubscribe()
            self._subscription = None
