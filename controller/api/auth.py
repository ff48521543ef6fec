"""Bearer-token authentication of the HTTP API.

With ``http_auth = "token"`` (the default) every ``/api/v1`` route but ``/health``, and
``/metrics``, needs ``Authorization: Bearer TOKEN`` with a token from ``edgefleet
controller api-token create`` (``edgefleet.controller.api_tokens``). A ``read`` token may
send GET and HEAD requests, an ``operator`` token any request::

    no or malformed Authorization header     401  unauthorized   WWW-Authenticate: Bearer
    unknown, wrong or revoked token          401  unauthorized   WWW-Authenticate: Bearer
    read token on a POST, PUT or DELETE      403  forbidden

``/api/v1/health``, the OpenAPI document, its interactive reference and the dashboard's
static files need no token: they contain no fleet data, and a load balancer's health
check has no token to send.

Each rejection is logged with the client's address and the token id, never the secret.
A script that retries a revoked token must not fill the log. So further rejections of a
client within ``REJECTION_LOG_WINDOW_S`` are only counted, and the client's next line
after the window gives their number.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import sqlalchemy as sa
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from edgefleet.controller.addresses import is_loopback
from edgefleet.controller.api.errors import ApiError, database_error, error_response
from edgefleet.controller.api_tokens import CREATE_COMMAND, ApiTokenStore
from edgefleet.controller.errors import ApiTokenRejectedError, ConfigError, ControllerStateError
from edgefleet.controller.models import ApiTokenRole, ApiTokenRow
from edgefleet.controller.ratelimit import ThrottledLog

__all__ = [
    "PUBLIC_PATHS",
    "READ_METHODS",
    "REJECTION_LOG_WINDOW_S",
    "HttpAuth",
    "TokenAuthMiddleware",
    "authorize",
    "check_http_auth",
    "check_request",
    "is_guarded",
    "rejection_log",
]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
# Paths under the API prefix that need no token; see the module docstring.
PUBLIC_PATHS = frozenset(
    f"{API_PREFIX}{path}" for path in ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect")
)
# Methods a read token may send.
READ_METHODS = frozenset({"GET", "HEAD"})
# After a logged rejection, further ones of the same client are only counted for this long.
REJECTION_LOG_WINDOW_S = 60.0

_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="A token from `edgefleet controller api-token create NAME [--role read]`. "
    "Read tokens may send GET requests, operator tokens any request.",
)
_TOKEN_HINT = (
    f"send `Authorization: Bearer TOKEN` with a token from `{CREATE_COMMAND}`, run on the "
    "controller host"
)


def rejection_log() -> ThrottledLog:
    """Return the log of rejected requests for one app: a line per client per window."""
    return ThrottledLog(logger, window_s=REJECTION_LOG_WINDOW_S)


class HttpAuth(StrEnum):
    """Authentication mode of the HTTP API (``controller.http_auth``)."""

    TOKEN = "token"  # a bearer token on every API and metrics request
    NONE = "none"  # no authentication; allowed only on a loopback address


def check_http_auth(mode: str, host: str) -> HttpAuth:
    """Return ``mode`` as ``HttpAuth``; raises ``ConfigError`` for ``none`` off loopback."""
    auth = HttpAuth(mode)
    if auth is HttpAuth.NONE and not is_loopback(host):
        raise ConfigError(
            f'controller.http_auth = "none" is only allowed on a loopback address, but the '
            f"HTTP API binds to {host}; remove the key to require API tokens, or bind "
            "--http-host 127.0.0.1"
        )
    return auth


class TokenAuthMiddleware:
    """Rejects requests to guarded paths that carry no token allowed to send them.

    It runs before routing, so a request without a valid token is rejected before its
    body is read: a multipart model upload is not spooled to disk first, as it would be
    for a route dependency. The token row goes into the request state for ``authorize``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            row = await run_in_threadpool(check_request, request)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, headers=exc.headers)
            await response(scope, receive, send)
            return
        except sa.exc.SQLAlchemyError as exc:
            # Middleware runs outside the app's exception handlers, so it responds itself.
            await database_error(request, exc)(scope, receive, send)
            return
        request.state.api_token = row
        await self.app(scope, receive, send)


def is_guarded(path: str) -> bool:
    """Return whether requests to ``path`` need a token."""
    if path == "/metrics":
        return True
    return path.startswith(f"{API_PREFIX}/") and path.rstrip("/") not in PUBLIC_PATHS


def check_request(request: Request) -> ApiTokenRow:
    """Return the row of the request's token if its role allows the method.

    Logs and raises ``ApiError`` (401 or 403) otherwise. It reads the database, so async
    code runs it on a worker thread.
    """
    header = request.headers.get("authorization")
    if header is None:
        raise _rejected(request, 401, "missing Authorization header", token_id=None)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _rejected(request, 401, "malformed Authorization header", token_id=None)

    try:
        store = ApiTokenStore(request.app.state.controller.registry.database)
    except ControllerStateError as exc:
        raise ApiError(
            503, "unavailable", f"{exc}; retry once the controller is running again"
        ) from None
    try:
        row = store.authenticate(token.strip())
    except ApiTokenRejectedError as exc:
        raise _rejected(request, 401, str(exc), token_id=exc.token_id) from None

    if row.role is not ApiTokenRole.OPERATOR and request.method not in READ_METHODS:
        raise _rejected(
            request,
            403,
            f"API token {row.id} ({row.name}) has the {row.role} role, which allows only "
            f"GET requests; send {request.method} with a token created by "
            f"`{CREATE_COMMAND} --role operator`",
            token_id=row.id,
        )
    return row


def authorize(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Security(_BEARER),  # noqa: B008
) -> None:
    """Declare the bearer scheme in the OpenAPI document and check that it was enforced.

    ``TokenAuthMiddleware`` did the check before the body was read; this dependency
    rejects the request if the app was built without it.
    """
    if getattr(request.state, "api_token", None) is None:
        raise _rejected(request, 401, "the request was not authenticated", token_id=None)


def _rejected(request: Request, status: int, reason: str, *, token_id: str | None) -> ApiError:
    client = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
    rejections: ThrottledLog = request.app.state.rejection_log
    rejections.log(
        request.client.host if request.client else "unknown",
        "rejected %s %s from %s with HTTP %d: %s (token %s)",
        request.method,
        request.url.path,
        client,
        status,
        reason,
        token_id or "none",
    )
    if status == 403:
        return ApiError(403, "forbidden", reason)
    return ApiError(
        401,
        "unauthorized",
        f"{reason}; {_TOKEN_HINT}",
        headers={"WWW-Authenticate": "Bearer"},
    )
