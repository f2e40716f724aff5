"""The event catalogue: which messages of the contracts are events, and docs/events.md,
the page generated from them.

A message is an event when it carries the `shop.events.v1.event` option (an EventSpec:
its producer, consumers and aggregate field); its type and its NATS subject are its full
name. The option is read through a descriptor pool built from the descriptor set itself,
not through the generated `shop.events.v1.options_pb2`, so that `make breaking`
(tools/check_event_types.py) reads a released descriptor set by its own definition of the
option, and a set without the option (a release older than the events) has no events.

The page lists the envelope's fields, then each event: subject, producer, consumers,
aggregate id, the file that declares it and its fields with their comments; then the
shop.* types those fields use. The comments are the contract's own.

    python -m shopmesh.event_catalogue gen/descriptor.binpb docs/events.md
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from shopmesh.api_reference import PACKAGE_PREFIX, Contracts, _fields, _type_section

EVENT_OPTION = "shop.events.v1.event"
ENVELOPE = ".shop.events.v1.EventEnvelope"
CONSUMERS = ("notification", "reporting")
"""The consuming services, by their durable consumer names."""

FieldProto = descriptor_pb2.FieldDescriptorProto

INTRO = """\
# Event catalogue

<!-- Generated from gen/descriptor.binpb by `python -m shopmesh.event_catalogue` (make gen):
do not edit; change the contracts in proto/ instead. -->

Every event the services publish, from the contracts in `proto/` and their comments. An
event is a fact message that carries the `shop.events.v1.event` option (an `EventSpec`,
`proto/shop/events/v1/options.proto`); its type and its NATS subject are the message's full
name. Each event travels inside an `EventEnvelope`, the data of one JetStream message in the
stream `SHOP_EVENTS` (subjects `shop.>`). `make breaking` fails when an event type of the
released contract, and so its subject, disappears, or stops being an event.
"""


@dataclass(frozen=True)
class Event:
    """One event type, as its contract declares it."""

    type: str
    """The message's full name, e.g. shop.order.v1.OrderConfirmed; also the NATS subject."""
    file: str
    """The proto file that declares it, e.g. shop/order/v1/order_events.proto."""
    producer: str
    consumers: tuple[str, ...]
    aggregate_field: str

    @property
    def subject(self) -> str:
        return self.type


def message_files(descriptor_set: bytes) -> dict[str, str]:
    """The file of every top-level message, by full name (without the leading dot)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    return {
        f"{file.package}.{message.name}": file.name
        for file in files.file
        for message in file.message_type
    }


def events(descriptor_set: bytes) -> list[Event]:
    """The events a descriptor set declares, ordered by file, then as declared; none if it
    has no `shop.events.v1.event` option."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    try:
        # Any: the stubs type an extension only as a generated module declares it.
        option: Any = pool.FindExtensionByName(EVENT_OPTION)
    except KeyError:
        return []
    classes = message_factory.GetMessageClassesForFiles([f.name for f in files.file], pool)
    # The options as the set's own pool parses them: MessageOptions with this set's option.
    options_class = classes["google.protobuf.MessageOptions"]
    found = []
    for file in sorted(files.file, key=lambda f: f.name):
        for message in file.message_type:
            options = options_class.FromString(message.options.SerializeToString())
            if not options.HasExtension(option):
                continue
            spec = options.Extensions[option]
            found.append(
                Event(
                    type=f"{file.package}.{message.name}",
                    file=file.name,
                    producer=spec.producer,
                    consumers=tuple(spec.consumers),
                    aggregate_field=spec.aggregate_field,
                )
            )
    return found


def _anchor(event: Event) -> str:
    """GitHub's anchor for the event's heading (its type in backquotes)."""
    return event.type.lower().replace(".", "")


def _used_types(contracts: Contracts, roots: list[str]) -> list[str]:
    """Every shop.* message and enum the roots' fields reach, in the order first met,
    the roots themselves excluded (they have sections of their own)."""
    seen: dict[str, None] = {}

    def visit(name: str) -> None:
        if name in seen or name in roots or not name.lstrip(".").startswith(PACKAGE_PREFIX):
            return
        seen[name] = None
        if name in contracts.messages:
            for item in contracts.messages[name].field:
                if item.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
                    visit(item.type_name)

    for root in roots:
        for item in contracts.messages[root].field:
            if item.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
                visit(item.type_name)
    return list(seen)


def _codes(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{name}`" for name in names) or "none"


def _event_section(contracts: Contracts, event: Event) -> Iterator[str]:
    yield f"### `{event.type}`"
    yield ""
    yield contracts.comments.get(f".{event.type}", "")
    yield ""
    yield "| | |"
    yield "|---|---|"
    yield f"| subject | `{event.subject}` |"
    yield f"| producer | `{event.producer}` |"
    yield f"| consumers | {_codes(event.consumers)} |"
    yield f"| aggregate id | `{event.aggregate_field}` |"
    yield f"| contract | `proto/{event.file}` |"
    yield ""
    yield from _fields(contracts, f".{event.type}")
    yield ""


def render(descriptor_set: bytes) -> str:
    contracts = Contracts(descriptor_pb2.FileDescriptorSet.FromString(descriptor_set))
    declared = events(descriptor_set)
    lines = [INTRO, "## The envelope", ""]
    lines += _type_section(contracts, ENVELOPE)
    lines += [
        "## Events",
        "",
        "| type and subject | producer | consumers | aggregate id |",
        "|---|---|---|---|",
    ]
    for event in declared:
        lines.append(
            f"| [`{event.type}`](#{_anchor(event)}) | `{event.producer}` |"
            f" {_codes(event.consumers)} | `{event.aggregate_field}` |"
        )
    lines.append("")
    for event in declared:
        lines += _event_section(contracts, event)
    lines += ["## Types the events use", ""]
    for name in _used_types(contracts, [f".{event.type}" for event in declared]):
        lines += _type_section(contracts, name)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    output = pathlib.Path(argv[2])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(pathlib.Path(argv[1]).read_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
