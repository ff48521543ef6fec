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
"""

from __future__ import annotations

import ipaddress
import logging
from enum import StrEnum
from typing import NoReturn

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edgefleet.controller.api.errors import ApiError
from edgefleet.controller.api_tokens import CREATE_COMMAND, ApiTokenStore
from edgefleet.controller.errors import ApiTokenRejectedError, ConfigError
from edgefleet.controller.models import ApiTokenRole

__all__ = ["READ_METHODS", "HttpAuth", "authorize", "check_http_auth", "is_loopback"]

logger = logging.getLogger(__name__)

# Methods a read token may send.
READ_METHODS = frozenset({"GET", "HEAD"})

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


class HttpAuth(StrEnum):
    """How the HTTP API authenticates requests (``controller.http_auth``)."""

    TOKEN = "token"  # a bearer token on every API and metrics request
    NONE = "none"  # no authentication; allowed only on a loopback address


def is_loopback(host: str) -> bool:
    """Return whether ``host`` is ``localhost`` or a loopback IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


def authorize(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Security(_BEARER),  # noqa: B008
) -> None:
    """Reject the request unless it carries a valid token whose role allows its method.

    A sync dependency, so FastAPI runs its database read on a worker thread.
    """
    header = request.headers.get("authorization")
    if credentials is None:
        if header is None:
            _reject(request, 401, "missing Authorization header", token_id=None)
        _reject(request, 401, "malformed Authorization header", token_id=None)

    store = ApiTokenStore(request.app.state.controller.registry.database)
    try:
        row = store.authenticate(credentials.credentials)
    except ApiTokenRejectedError as exc:
        _reject(request, 401, str(exc), token_id=exc.token_id)

    request.state.api_token_id = row.id
    if row.role is not ApiTokenRole.OPERATOR and request.method not in READ_METHODS:
        _reject(
            request,
            403,
            f"API token {row.id} ({row.name}) has the {row.role} role, which allows only "
            f"GET requests; send {request.method} with a token created by "
            f"`{CREATE_COMMAND} --role operator`",
            token_id=row.id,
        )


def _reject(request: Request, status: int, reason: str, *, token_id: str | None) -> NoReturn:
    client = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
    logger.warning(
        "rejected %s %s from %s with HTTP %d: %s (token %s)",
        request.method,
        request.url.path,
        client,
        status,
        reason,
        token_id or "none",
    )
    if status == 403:
        raise ApiError(403, "forbidden", reason)
    raise ApiError(
        401,
        "unauthorized",
        f"{reason}; {_TOKEN_HINT}",
        headers={"WWW-Authenticate": "Bearer"},
    )
