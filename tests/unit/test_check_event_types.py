"""tools/check_event_types.py, `make breaking`'s event check, on the real descriptor set
and edits of it: a removed event type, a removed EventSpec and a move to another file
fail; no change, an added event and a release without events pass. Starts no process
(tests/contract/test_breaking.py runs it through tools/breaking, with buf)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
from google.protobuf import descriptor_pb2

from shopmesh.tools import REPO
from tools.check_event_types import breaking_changes, main

DESCRIPTOR_SET = REPO / "gen" / "descriptor.binpb"
# Inventory's facts, not order's: the order API (ListOrderEvents) uses the order facts,
# so a descriptor set without one of them does not build.
INVENTORY_EVENTS = "shop/inventory/v1/inventory_events.proto"
Files = descriptor_pb2.FileDescriptorSet


def contract() -> Files:
    return Files.FromString(DESCRIPTOR_SET.read_bytes())


def file_of(files: Files, name: str) -> descriptor_pb2.FileDescriptorProto:
    return next(f for f in files.file if f.name == name)


def take(files: Files, file: str, message: str) -> descriptor_pb2.DescriptorProto:
    """Removes a message from a file; returns it."""
    messages = file_of(files, file).message_type
    index = next(i for i, m in enumerate(messages) if m.name == message)
    taken = descriptor_pb2.DescriptorProto()
    taken.CopyFrom(messages[index])
    del messages[index]
    return taken


def remove(files: Files) -> None:
    take(files, INVENTORY_EVENTS, "StockReleased")


def strip_spec(files: Files) -> None:
    voided = next(
        m
        for m in file_of(files, "shop/payment/v1/payment_events.proto").message_type
        if m.name == "PaymentVoided"
    )
    voided.ClearField("options")


def move(files: Files) -> None:
    """StockCommitted to a new file of the same package (a FILE-level, not a package-level,
    change: only a rule set of FILE would see it)."""
    moved = take(files, INVENTORY_EVENTS, "StockCommitted")
    new = files.file.add()
    new.CopyFrom(file_of(files, INVENTORY_EVENTS))
    new.name = "shop/inventory/v1/inventory_facts.proto"
    del new.message_type[:]
    new.ClearField("source_code_info")
    new.message_type.append(moved)


def without_events(files: Files) -> None:
    """The contract as the release before the events had it: without the event files and
    the API that uses them (order_service.proto, for ListOrderEvents)."""
    dropped = {f.name for f in files.file if "events" in f.name}
    kept = [f for f in files.file if f.name not in dropped and not dropped & {*f.dependency}]
    del files.file[:]
    files.file.extend(kept)


def changed(edit: Callable[[Files], None]) -> bytes:
    files = contract()
    edit(files)
    return files.SerializeToString()


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (
            remove,
            "event type shop.inventory.v1.StockReleased (subject"
            " shop.inventory.v1.StockReleased) was removed",
        ),
        (strip_spec, "shop.payment.v1.PaymentVoided is no longer an event: its EventSpec"),
        (
            move,
            "event type shop.inventory.v1.StockCommitted moved from"
            " shop/inventory/v1/inventory_events.proto to shop/inventory/v1/inventory_facts.proto",
        ),
    ],
    ids=["remove an event", "remove its EventSpec", "move it to another file"],
)
def test_a_released_event_that_disappears_fails(
    edit: Callable[[Files], None], complaint: str
) -> None:
    problems = breaking_changes(DESCRIPTOR_SET.read_bytes(), changed(edit))
    assert len(problems) == 1, problems
    assert complaint in problems[0]


def test_no_change_passes() -> None:
    assert breaking_changes(DESCRIPTOR_SET.read_bytes(), DESCRIPTOR_SET.read_bytes()) == []


def test_an_added_event_passes() -> None:
    assert breaking_changes(changed(remove), DESCRIPTOR_SET.read_bytes()) == []


def test_a_release_without_events_passes() -> None:
    assert breaking_changes(changed(without_events), DESCRIPTOR_SET.read_bytes()) == []


def test_the_command_fails_with_the_problem_and_passes_with_a_count(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    released, current = tmp_path / "released.binpb", tmp_path / "current.binpb"
    released.write_bytes(DESCRIPTOR_SET.read_bytes())
    current.write_bytes(changed(strip_spec))
    assert main(["check", str(released), str(current)]) == 1
    assert "breaking event change: shop.payment.v1.PaymentVoided" in capsys.readouterr().err

    current.write_bytes(DESCRIPTOR_SET.read_bytes())
    assert main(["check", str(released), str(current)]) == 0
    assert "all 15 of the released contract are still declared" in capsys.readouterr().out
