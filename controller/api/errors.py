"""JSON error responses of the HTTP API.

Every error leaves the API as ``{"error": {"code", "message", "field"}}`` with a status
code. Controller exceptions are translated here, in one place::

    ApiError                   raised by the routes themselves      its own status
                               (401 unauthorized, 403 forbidden: ``auth``)
    UnknownDeviceError         device_not_found                     404
    UnknownModelError          model_not_found                      404
    UnknownVariantError        variant_not_found                    404
    UnknownRolloutError        rollout_not_found                    404
    other InvalidInputError    invalid_input                        400
    RolloutStateError          conflict                             409
    RolloutConflictError       conflict                             409
    ControllerStateError       conflict (running), unavailable      409, 503
    RequestValidationError     validation_failed                    422
    HTTPException (Starlette)  not_found, method_not_allowed, ...   its own status
    database unavailable       database_unavailable                 503
    (SQLAlchemy OperationalError or a dropped connection)
    other DBAPIError           internal_error                       500
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgefleet.controller.db import database_unavailable, error_summary
from edgefleet.controller.errors import (
    ControllerStateError,
    RolloutConflictError,
    RolloutStateError,
    UnknownDeviceError,
    UnknownModelError,
    UnknownRolloutError,
    UnknownVariantError,
)
from edgefleet.controller.ratelimit import ThrottledLog
from edgefleet.controller.service import ControllerState
from edgefleet.errors import InvalidInputError

__all__ = ["ApiError", "database_error", "error_response", "install_error_handlers"]

logger = logging.getLogger(__name__)
# One warning a minute while the database is unavailable, not one per request.
_outage_log = ThrottledLog(logger, window_s=60.0)


class ApiError(Exception):
    """An error a route returns as JSON: status code, stable code, message, field."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "field": field}},
        headers=headers,
    )


def database_error(request: Request, exc: sa.exc.SQLAlchemyError) -> JSONResponse:
    """Build the response to a request that failed in the database: 503 if unreachable, else 500."""
    if database_unavailable(exc):
        summary = error_summary(exc)
        _outage_log.log(
            "database",
            "HTTP API requests fail because the database is unavailable: %s",
            summary,
        )
        return error_response(
            503,
            "database_unavailable",
            f"the controller's database is unavailable ({summary}); retry once it is back",
        )
    logger.error("%s %s failed in the database", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "the request failed in the database")


_NOT_FOUND = (
    (UnknownDeviceError, "device_not_found", "device_id"),
    (UnknownModelError, "model_not_found", "model_id"),
    (UnknownVariantError, "variant_not_found", "variant_id"),
    (UnknownRolloutError, "rollout_not_found", "rollout_id"),
)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into the JSON error shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers
        )

    @app.exception_handler(InvalidInputError)
    async def invalid_input(request: Request, exc: InvalidInputError) -> JSONResponse:
        for error_type, code, field in _NOT_FOUND:
            if isinstance(exc, error_type):
                return error_response(404, code, str(exc), field=field)
        return error_response(400, "invalid_input", str(exc))

    @app.exception_handler(RolloutStateError)
    @app.exception_handler(RolloutConflictError)
    async def rollout_conflict(request: Request, exc: Exception) -> JSONResponse:
        return error_response(409, "conflict", str(exc))

    @app.exception_handler(ControllerStateError)
    async def controller_state(request: Request, exc: ControllerStateError) -> JSONResponse:
        controller = request.app.state.controller
        if controller.state is not ControllerState.RUNNING:
            return error_response(
                503, "unavailable", f"{exc}; retry once the controller is running again"
            )
        return error_response(409, "conflict", str(exc))

    @app.exception_handler(sa.exc.SQLAlchemyError)
    async def database_failed(request: Request, exc: sa.exc.SQLAlchemyError) -> JSONResponse:
        return database_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = describe_validation_errors(exc.errors())
        return error_response(422, "validation_failed", message, field=field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = (
                f"no route {request.url.path}; the API lives under /api/v1, see "
                "/api/v1/openapi.json"
            )
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, code, message)


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, str | None]:
    """Turn pydantic's error list into one sentence per error and the first field name."""
    sentences = []
    first_field = None
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        where = location[0] if location else "request"
        name = ".".join(location[1:]) if len(location) > 1 else ""
        if first_field is None and name:
            first_field = name
        place = {"query": "query parameter", "path": "path parameter", "body": "body field"}
        label = f"{place.get(where, where)} {name}".strip() if name else f"the {where}"
        sentence = f"{label}: {error.get('msg', 'invalid value')}"
        # A missing field's "input" is the whole enclosing object, which names nothing.
        if "input" in error and error.get("type") != "missing":
            sentence += f" (got {_short_repr(error['input'])})"
        sentences.append(sentence)
    return "invalid request: " + "; ".join(sentences), first_field


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
