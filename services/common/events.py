"""Events as the producing services write them: a fact (a message of a `*_events.proto`)
wrapped in its `shop.events.v1.EventEnvelope` and appended to the caller's transactional
outbox (services.common.outbox), inside the store's own write.

The contract says everything the envelope needs besides the fact: the subject is the
fact's full name, and the aggregate id is the fact's field its `EventSpec` names
(`aggregate_field`). So a store says only which fact happened; `emit` cannot give two
facts of one kind different subjects or aggregates.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from services.common import outbox
from services.common.convert import timestamp
from services.common.database import Tx
from shop.events.v1 import envelope_pb2, options_pb2

# The option's descriptor: typed loosely, as the generated stubs type it as a plain field.
_EVENT: Any = options_pb2.event


def spec(fact: Message) -> options_pb2.EventSpec:
    """The fact's EventSpec; TypeError if its message is not an event of the contracts."""
    options = fact.DESCRIPTOR.GetOptions()
    if not options.HasExtension(_EVENT):
        raise TypeError(f"{fact.DESCRIPTOR.full_name} is not an event (it has no EventSpec)")
    found: options_pb2.EventSpec = options.Extensions[_EVENT]
    return found


def subject(fact: Message) -> str:
    """The NATS subject of the fact: its type, the message's full name."""
    return str(fact.DESCRIPTOR.full_name)


def aggregate_id(fact: Message) -> str:
    return str(getattr(fact, spec(fact).aggregate_field))


def envelope(
    fact: Message, *, event_id: str, sequence: int, occurred_at: float, request_id: str = ""
) -> envelope_pb2.EventEnvelope:
    return envelope_pb2.EventEnvelope(
        event_id=event_id,
        type=subject(fact),
        aggregate_id=aggregate_id(fact),
        sequence=sequence,
        occurred_at=timestamp(occurred_at),
        request_id=request_id,
        payload=fact.SerializeToString(),
    )


async def emit(
    tx: Tx, fact: Message, *, request_id: str = "", now: float | None = None
) -> outbox.Appended:
    """Appends `fact` to the outbox in the write `tx`: it commits with the write's own
    statements or not at all. `now` is the time the write works at (else the database's
    is read). The caller wakes the relay once the write has committed (`Outbox.notify`)."""

    def envelope_for(event_id: str, sequence: int, occurred_at: float) -> bytes:
        return envelope(
            fact,
            event_id=event_id,
            sequence=sequence,
            occurred_at=occurred_at,
            request_id=request_id,
        ).SerializeToString()

    return await outbox.append(
        tx,
        aggregate_id=aggregate_id(fact),
        subject=subject(fact),
        envelope_for=envelope_for,
        now=now,
    )
