"""``create_app``: the FastAPI application of the controller's HTTP API and metrics."""

from __future__ import annotations

import contextlib
import logging
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request, Security
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.controller.api import devices, events, fleet
from edgefleet.controller.api import rollouts as rollout_routes
from edgefleet.controller.api.auth import (
    API_PREFIX,
    HttpAuth,
    TokenAuthMiddleware,
    authorize,
    rejection_log,
)
from edgefleet.controller.api.errors import ApiError, error_response, install_error_handlers
from edgefleet.controller.api.schemas import ErrorResponse, Health
from edgefleet.controller.metrics import FleetCollector
from edgefleet.controller.rollouts import RolloutManager
from edgefleet.controller.service import Controller, ControllerState

__all__ = ["API_PREFIX", "DEFAULT_MAX_UPLOAD_BYTES", "UploadLimitMiddleware", "create_app"]

logger = logging.getLogger(__name__)

# ONNX models for Raspberry-Pi-class devices are a few MB to a few hundred MB; a bigger
# upload is more likely a mistake (a checkpoint with optimizer state, say) than a model.
DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024


def create_app(
    controller: Controller,
    *,
    rollouts: RolloutManager | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    web_dir: Path | None = None,
    auth: HttpAuth | None = None,
) -> FastAPI:
    """Build the API for a running ``controller``.

    ``rollouts`` serves ``/api/v1/rollouts``; by default it is ``controller.rollouts``.
    ``web_dir``, when it exists, is served at ``/`` as static files (the dashboard).
    ``auth`` defaults to the controller's ``http_auth`` setting; with ``HttpAuth.TOKEN``
    every API route but ``/health``, and ``/metrics``, needs a bearer token (``auth``).
    Checking that ``HttpAuth.NONE`` serves only loopback is the caller's job
    (``auth.check_http_auth``), because the app does not know the address it is served on.
    """
    auth = HttpAuth(controller.config.http_auth if auth is None else auth)
    guarded = [Security(authorize)] if auth is HttpAuth.TOKEN else []
    auth_responses: dict[int | str, dict[str, Any]] = (
        {
            401: {"model": ErrorResponse, "description": "Missing, unknown or revoked token"},
            403: {"model": ErrorResponse, "description": "A read token on a write request"},
        }
        if guarded
        else {}
    )
    app = FastAPI(
        title="edgefleet controller API",
        version=_package_version(),
        description="Devices, telemetry, models, variants, deployments, rollouts and "
        "events of an edgefleet controller.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        responses={
            400: {"model": ErrorResponse, "description": "Invalid value"},
            404: {"model": ErrorResponse, "description": "Unknown id"},
            422: {"model": ErrorResponse, "description": "Malformed request"},
        },
    )
    app.state.controller = controller
    app.state.rejection_log = rejection_log()
    app.state.rollouts = rollouts if rollouts is not None else controller.rollouts
    # Set by ``HttpServer.stop``: long polls return their page at once instead of holding
    # up the server's shutdown.
    app.state.stopping = threading.Event()
    install_error_handlers(app)

    # Health checks come from load balancers and supervisors that hold no token, and the
    # response contains no fleet data.
    public = APIRouter(prefix=API_PREFIX)
    public.add_api_route(
        "/health",
        _health,
        methods=["GET"],
        response_model=Health,
        tags=["health"],
        summary="Controller health",
    )
    app.include_router(public)

    api = APIRouter(prefix=API_PREFIX, dependencies=guarded, responses=auth_responses)
    api.include_router(devices.router)
    api.include_router(fleet.router)
    api.include_router(events.router)
    api.include_router(rollout_routes.router)
    app.include_router(api)

    metrics_registry = CollectorRegistry(auto_describe=False)
    metrics_registry.register(FleetCollector(controller))
    app.add_api_route(
        "/metrics",
        _metrics_endpoint(metrics_registry),
        methods=["GET"],
        include_in_schema=True,
        tags=["metrics"],
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=guarded,
        responses=auth_responses,
    )

    if web_dir is not None and web_dir.is_dir():
        from starlette.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")

    app.add_middleware(
        UploadLimitMiddleware, path=f"{API_PREFIX}/models", max_bytes=max_upload_bytes
    )
    if auth is HttpAuth.TOKEN:
        # Added last, so it runs first: no upload is read before its token is checked.
        app.add_middleware(TokenAuthMiddleware)
    else:
        logger.warning("the HTTP API serves every request without a token (http_auth = none)")
    return app


def _health(request: Request) -> Health:
    controller: Controller = request.app.state.controller
    state = controller.state
    if state is not ControllerState.RUNNING:
        raise ApiError(503, "unavailable", f"the controller is {state}; retry when it runs")
    # A controller that cannot reach its database serves no request, so a load balancer
    # should route around it. A SQLAlchemyError raised here becomes a 503.
    with controller.registry.database.engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
    return Health(status="ok", controller_state=state.value, version=_package_version())


def _metrics_endpoint(registry: CollectorRegistry) -> Any:
    def metrics() -> Response:
        """Fleet metrics in the Prometheus text format, read from the registry per scrape."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


def _package_version() -> str:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:
        return "unknown"


class _BodyTooLarge(Exception):
    pass


class UploadLimitMiddleware:
    """Rejects request bodies over ``max_bytes`` on one path with 413.

    A declared ``Content-Length`` over the limit is rejected before the body is read. A
    body without one (chunked) is counted as it arrives and cut off at the limit, so a
    client cannot fill the disk by leaving the length out.
    """

    def __init__(self, app: ASGIApp, *, path: str, max_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send, int(declared))
            return

        received = 0
        too_large = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # FastAPI turns an exception raised while it parses a form into its own 400
            # response. Once the limit was hit, the 413 replaces that response.
            if not too_large:
                await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if too_large:
            await self._reject(scope, receive, send, received)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        limit_mb = self.max_bytes / (1024 * 1024)
        logger.warning(
            "rejected an upload of at least %d bytes to %s (limit %d bytes)",
            size,
            self.path,
            self.max_bytes,
        )
        response = error_response(
            413,
            "upload_too_large",
            f"the upload is at least {size} bytes, over the limit of {self.max_bytes} bytes "
            f"({limit_mb:g} MiB); compress or quantize the model first, or raise the limit "
            "with --http-max-upload-mb",
        )
        await response(scope, receive, send)
