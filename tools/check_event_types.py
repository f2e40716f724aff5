"""Fails if an event type of the released contract, or its subject, disappeared.

An event's type and its NATS subject are its message's full name, and consumers
subscribe by it, so a released event must stay: same full name, still an event (still
carrying its EventSpec), in the same file. buf's FILE rules catch a deleted message, but
not a removed EventSpec (they do not read custom options), and a rule set that is not
FILE would let a message move to another file; this catches each whatever the rules.
An added event passes, and so does a release older than the events (it has none). No
library does this comparison.

    python tools/check_event_types.py RELEASED.binpb CURRENT.binpb
"""

from __future__ import annotations

import sys

from shopmesh.event_catalogue import events, message_files


def breaking_changes(released: bytes, current: bytes) -> list[str]:
    now = {event.type: event for event in events(current)}
    files = message_files(current)
    problems = []
    for event in events(released):
        if event.type not in files:
            problems.append(
                f"event type {event.type} (subject {event.subject}) was removed"
                f" (it was in {event.file})"
            )
        elif event.type not in now:
            problems.append(
                f"{event.type} is no longer an event: its EventSpec"
                " (option (shop.events.v1.event)) was removed"
            )
        elif files[event.type] != event.file:
            problems.append(
                f"event type {event.type} moved from {event.file} to {files[event.type]}"
            )
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], "rb") as released_file, open(argv[2], "rb") as current_file:
        released, current = released_file.read(), current_file.read()
    problems = breaking_changes(released, current)
    for problem in problems:
        print(f"breaking event change: {problem}", file=sys.stderr)
    released_count = len(events(released))
    if not problems:
        print(
            f"event types: all {released_count} of the released contract are still declared,"
            " with their subjects"
            if released_count
            else "event types: the released contract declares none"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
