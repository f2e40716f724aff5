"""ServiceError <-> gRPC status with google.rpc details (ErrorInfo, BadRequest).

Servers turn a ServiceError into a status (`to_grpc_status`); clients read the details of
an error they received (`error_details`). The google.rpc messages come from
googleapis-common-protos and the encoding from grpcio-status.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import ErrorKind, FieldViolation, ServiceError

INTERNAL_REASON = "INTERNAL"
INTERNAL_MESSAGE = "internal error"

_DETAILS_KEY = "grpc-status-details-bin"


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_grpc_status(error: ServiceError, domain: str) -> grpc.Status:
    """The status a caller receives for `error`: code, message, ErrorInfo, BadRequest."""
    details = [
        _packed(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
        )
    ]
    if error.violations:
        details.append(
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    status = status_pb2.Status(
        code=code_pb2.Code.Value(error.kind.value), message=error.message, details=details
    )
    return rpc_status.to_status(status)


def internal_status(domain: str) -> grpc.Status:
    """The status for an unexpected exception: generic, so no internal detail leaks."""
    return to_grpc_status(
        ServiceError(ErrorKind.INTERNAL, INTERNAL_REASON, INTERNAL_MESSAGE), domain
    )


@dataclass(frozen=True)
class ErrorDetails:
    """What a client learns from an error status: code, message, reason and the rest."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    violations: tuple[FieldViolation, ...]

    def to_service_error(self, kind: ErrorKind | None = None) -> ServiceError:
        """The same error, to raise again from this service (e.g. a participant's)."""
        return ServiceError(
            kind or ErrorKind[self.code.name],
            self.reason,
            self.message,
            metadata=self.metadata,
            violations=self.violations,
        )


def error_details(error: grpc.aio.AioRpcError | grpc.RpcError) -> ErrorDetails:
    """Reads the code, ErrorInfo and BadRequest of an error a client received."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    reason, domain, metadata = "", "", {}
    violations: list[FieldViolation] = []
    for key, value in error.trailing_metadata() or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Unpack(bad):
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
    return ErrorDetails(code, message, reason, domain, metadata, tuple(violations))
