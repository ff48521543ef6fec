"""The controller's HTTP API (FastAPI, served by uvicorn inside the controller process).

``edgefleet controller serve --http-port PORT`` serves it on 127.0.0.1, or on the
address that ``--http-host`` sets. Every path sits under ``/api/v1``, except ``/metrics``
(Prometheus text format). The OpenAPI document is at ``/api/v1/openapi.json`` and the
interactive reference at ``/api/v1/docs``. Times are ISO 8601 strings in UTC. Query
times (``since``, ``until``) accept ISO 8601 with an offset, or Unix seconds.

Requests need ``Authorization: Bearer TOKEN``, except for ``/api/v1/health``, the OpenAPI
document and the reference page. The module ``auth`` describes the token roles.

Endpoints and shapes (``Device`` and the other names are the schemas in ``schemas``)::

    GET    /api/v1/health                          -> {"status", "controller_state", "version"}
    GET    /api/v1/devices                         -> {"devices": [Device]}
    GET    /api/v1/devices/{device_id}             -> Device
    GET    /api/v1/devices/{device_id}/telemetry   ?since&until&step&limit
                                                   -> TelemetryHistory
    GET    /api/v1/devices/{device_id}/ladder      -> {"device_id", "model_id", "ladder": [Variant]}
    GET    /api/v1/devices/{device_id}/deployments -> {"deployments": [Deployment]}
    POST   /api/v1/devices/{device_id}/deployments {"variant_id", "reason"?} -> 201 Deployment
    PUT    /api/v1/devices/{device_id}/pin         {"variant_id"?, "reason"?} -> Device
    DELETE /api/v1/devices/{device_id}/pin         -> Device
    GET    /api/v1/models                          -> {"active_model_id", "models": [Model]}
    POST   /api/v1/models                          multipart: model (.onnx file), data (.npz
                                                   file), name? -> 201 Model
    GET    /api/v1/models/{model_id}               -> Model
    GET    /api/v1/models/{model_id}/variants      ?profile -> ModelVariants
    GET    /api/v1/deployments                     ?device_id&state&limit
                                                   -> {"deployments": [Deployment]}
    GET    /api/v1/deployments/{deployment_id}     -> Deployment
    GET    /api/v1/rollouts                        ?state&limit -> {"rollouts": [Rollout]}
    POST   /api/v1/rollouts                        {"model_id"?, "target", "waves"?,
                                                   "variants"?, "gates"?} -> 201 Rollout
    GET    /api/v1/rollouts/{rollout_id}           -> Rollout
    POST   /api/v1/rollouts/{rollout_id}/pause     {"reason"?} -> Rollout
    POST   /api/v1/rollouts/{rollout_id}/resume    -> Rollout
    POST   /api/v1/rollouts/{rollout_id}/abort     {"reason"?} -> Rollout
    GET    /api/v1/events                          ?device_id&kind&since&after_id&limit&wait
                                                   -> {"events": [Event], "last_id"}
    GET    /api/v1/openapi.json                    -> the OpenAPI 3.1 document
    GET    /metrics                                -> Prometheus text exposition

``create_app(controller)`` builds the application and ``HttpServer(app, host=..., port=...)``
serves it on a thread; ``edgefleet controller serve --http-port`` does both.

Following events: call ``GET /api/v1/events?after_id=N&wait=30`` with the ``last_id`` of
the previous response. It returns at once when newer events exist, else it waits up to
``wait`` seconds (at most 60) for one and returns an empty list on timeout.

Every error is JSON with a status code::

    {"error": {"code": "device_not_found", "message": "...", "field": "device_id"}}

``message`` names the rejected value and how to fix it. Codes: 400 ``invalid_input``
(also a bad time range), 401 ``unauthorized`` (missing, malformed, unknown or revoked
token), 403 ``forbidden`` (a read token on a write), 404 ``*_not_found``, 409
``conflict`` (no model registered, a rollout in a state that forbids the action), 413
``upload_too_large``, 422 ``validation_failed`` (malformed body or query), 503
``unavailable`` (controller stopping).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.controller.api.app import create_app
    from edgefleet.controller.api.server import HttpServer

__all__ = ["HttpServer", "create_app"]

_EXPORTS = {"HttpServer": "server", "create_app": "app"}


def __getattr__(name: str) -> Any:
    import importlib

    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
