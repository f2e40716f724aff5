"""Order outcome events as the order service publishes them, and the Maildir a sink
writes, for the notification service's tests."""

from __future__ import annotations

import contextlib
import mailbox
import pathlib
import uuid
from collections.abc import Iterator
from email.message import Message

from shop.events.v1 import envelope_pb2
from shop.money.v1.money_pb2 import Money
from shop.order.v1 import order_events_pb2, order_pb2
from shopmesh.processes import ServiceProcess
from shopmesh.smtp_sink import sink_process


def confirmed(
    order_id: str, user_id: str, total_minor: int = 1299, event_id: str = ""
) -> envelope_pb2.EventEnvelope:
    fact = order_events_pb2.OrderConfirmed(
        order_id=order_id,
        user_id=user_id,
        total=Money(amount_minor=total_minor, currency_code="USD"),
        state=order_pb2.ORDER_STATE_CONFIRMED,
    )
    return wrap(fact, event_id)


def cancelled(
    order_id: str, user_id: str, reason: str = "OUT_OF_STOCK", event_id: str = ""
) -> envelope_pb2.EventEnvelope:
    fact = order_events_pb2.OrderCancelled(
        order_id=order_id,
        user_id=user_id,
        state=order_pb2.ORDER_STATE_CANCELLED,
        cancel_reason=reason,
    )
    return wrap(fact, event_id)


def wrap(
    fact: order_events_pb2.OrderConfirmed
    | order_events_pb2.OrderCancelled
    | order_events_pb2.OrderPlaced,
    event_id: str = "",
) -> envelope_pb2.EventEnvelope:
    return envelope_pb2.EventEnvelope(
        event_id=event_id or str(uuid.uuid4()),
        type=fact.DESCRIPTOR.full_name,
        aggregate_id=fact.order_id,
        sequence=2,
        payload=fact.SerializeToString(),
    )


def from_newer_contract(
    order_id: str,
) -> tuple[envelope_pb2.EventEnvelope, envelope_pb2.EventEnvelope]:
    """A fact of a type this build has never heard of, and an OrderConfirmed with a field
    (number 99) it has not: what a newer producer sends."""
    unknown = envelope_pb2.EventEnvelope(
        event_id=str(uuid.uuid4()),
        type="shop.order.v2.OrderGiftWrapped",
        aggregate_id=order_id,
        sequence=3,
        payload=b"\x0a\x03abc",
    )
    known = confirmed(order_id, "alice")
    # Field 99, length-delimited "gift": tag (99 << 3 | 2) as a varint, then the bytes.
    known.payload += b"\x9a\x06\x04gift"
    return unknown, known


def messages(maildir: pathlib.Path) -> list[Message]:
    """Every message the sink delivered (new/), in no particular order."""
    if not (maildir / "new").is_dir():
        return []
    return [m for _, m in mailbox.Maildir(maildir, create=False).items()]


def message_ids(maildir: pathlib.Path) -> list[str]:
    return sorted(str(m["Message-ID"]) for m in messages(maildir))


@contextlib.contextmanager
def running_sink(workdir: pathlib.Path, maildir: pathlib.Path) -> Iterator[ServiceProcess]:
    """The SMTP sink as a process on a free port, writing to `maildir`, ready (its ready
    file names the port: `.target`) before it is handed out; stopped by PID afterwards."""
    sink = sink_process(workdir, maildir).start()
    try:
        yield sink.wait_ready()
    finally:
        sink.stop()
