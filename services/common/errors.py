"""The error model every service raises, free of gRPC so domain code stays plain Python.

A `ServiceError` carries what a caller needs: a status kind, a stable UPPER_SNAKE reason
(google.rpc.ErrorInfo.reason), a human message, metadata, and field violations for bad
requests. `services.common.status` turns it into a gRPC status with typed details.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass


class ErrorKind(enum.Enum):
    """The gRPC status codes our services answer with, by name."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. `line_items[2].quantity`) and why."""

    field: str
    description: str


class ServiceError(Exception):
    """An error a service answers with on purpose (never an accident of the code)."""

    def __init__(
        self,
        kind: ErrorKind,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.violations = violations

    def __repr__(self) -> str:
        return f"ServiceError({self.kind.name}, {self.reason!r}, {self.message!r})"


def not_found(reason: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(ErrorKind.NOT_FOUND, reason, message, metadata=metadata)


def failed_precondition(reason: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(ErrorKind.FAILED_PRECONDITION, reason, message, metadata=metadata)


def already_exists(reason: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(ErrorKind.ALREADY_EXISTS, reason, message, metadata=metadata)


INVALID_REQUEST = "INVALID_REQUEST"


class Violations:
    """Collects every bad field of a request, so the caller learns all of them at once."""

    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._items.append(FieldViolation(field, description))

    def __iter__(self) -> Iterator[FieldViolation]:
        return iter(self._items)

    def has(self, field: str) -> bool:
        """Whether `field` already has a violation."""
        return any(v.field == field for v in self._items)

    def check(self, ok: bool, field: str, description: str) -> bool:
        """Records a violation unless `ok`; returns `ok` so checks can be chained."""
        if not ok:
            self.add(field, description)
        return ok

    def raise_if_any(self, reason: str = INVALID_REQUEST) -> None:
        if not self._items:
            return
        first = self._items[0]
        more = f" (and {len(self._items) - 1} more)" if len(self._items) > 1 else ""
        raise ServiceError(
            ErrorKind.INVALID_ARGUMENT,
            reason,
            f"invalid {first.field}: {first.description}{more}",
            violations=tuple(self._items),
        )
