"""What the three baseline services share: settings from the environment, the caller's
identity header, and ServiceError -> HTTP status + JSON body."""

from __future__ import annotations

import os
import pathlib
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.common import db
from services.common.errors import ErrorKind, ServiceError
from services.common.identity import USER_HEADER

HTTP_STATUS = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.FAILED_PRECONDITION: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.ALREADY_EXISTS: 409,
    ErrorKind.ABORTED: 409,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.PERMISSION_DENIED: 403,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.INTERNAL: 500,
}


def setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(f"BASELINE_{name}", default)
    if value is None:
        raise SystemExit(f"BASELINE_{name} must be set")
    return value


S = TypeVar("S", bound=db.Store)


def open_store(store_class: type[S]) -> S:
    """The service's store at BASELINE_DB, with one transaction and one COMMIT per write,
    as the classic design does (no group commit)."""
    return store_class(pathlib.Path(setting("DB")), group_commit=False)


def seed_file() -> pathlib.Path | None:
    value = setting("SEED", "")
    return pathlib.Path(value) if value else None


def error_body(error: ServiceError) -> dict[str, object]:
    return {
        "code": error.kind.value,
        "reason": error.reason,
        "message": error.message,
        "metadata": error.metadata,
        "violations": [{"field": v.field, "description": v.description} for v in error.violations],
    }


def install_error_handler(app: FastAPI) -> None:
    """ServiceError -> its HTTP status and JSON body; and /healthz for readiness."""

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        return JSONResponse(error_body(error), status_code=HTTP_STATUS[error.kind])


def caller(request: Request) -> str:
    user = request.headers.get(USER_HEADER, "")
    if not user:
        raise ServiceError(ErrorKind.UNAUTHENTICATED, "UNAUTHENTICATED", "no caller")
    return user
