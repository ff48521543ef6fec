"""Routes under ``/api/v1/devices``: state, telemetry history, ladder, deploy and pin."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from edgefleet.controller.api import queries
from edgefleet.controller.api.convert import (
    deployment_schema,
    device_schema,
    is_within_budget,
    pareto_front,
    parse_time,
    peak_memory_by_variant,
    point_schema,
    variant_schema,
)
from edgefleet.controller.api.errors import ApiError
from edgefleet.controller.api.schemas import (
    Deployment,
    DeploymentList,
    DeployRequest,
    Device,
    DeviceLadder,
    DeviceList,
    PinRequest,
    TelemetryHistory,
)
from edgefleet.controller.models import DeviceRow
from edgefleet.controller.service import Controller
from edgefleet.ids import validate_device_id

__all__ = ["router"]

logger = logging.getLogger(__name__)


def _check_device_id(request: Request) -> None:
    """Reject a device id in the path that no device can have (400, not 404)."""
    device_id = request.path_params.get("device_id")
    if device_id is not None:
        validate_device_id(device_id)


router = APIRouter(prefix="/devices", tags=["devices"], dependencies=[Depends(_check_device_id)])

# Maximum points one telemetry request returns. A dashboard chart needs far fewer.
MAX_TELEMETRY_POINTS = 10_000
# One day: a wider bucket hides every trend that matters for a device.
MAX_STEP_S = 86_400


def get_controller(request: Request) -> Controller:
    return request.app.state.controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def _device_views(controller: Controller, devices: list[DeviceRow]) -> list[Device]:
    registry = controller.registry
    latest = queries.latest_telemetry(registry.database)
    model = registry.active_model()
    peaks = (
        peak_memory_by_variant(queries.list_variants(registry.database, model.id))
        if model is not None
        else {}
    )
    views = []
    for device in devices:
        sample = latest.get(device.device_id)
        peak = peaks.get((device.profile_fingerprint, device.current_variant_id or ""), 0.0)
        views.append(
            device_schema(
                device,
                sample,
                within_budget=is_within_budget(
                    device, sample, policy=controller.config.policy, peak_memory_mb=peak
                ),
                dropped_samples=controller.dropped_samples(device.device_id),
            )
        )
    return views


@router.get("", response_model=DeviceList, summary="List devices")
def list_devices(controller: ControllerDep) -> DeviceList:
    """List every registered device with its profile, state, variants, budget and last sample."""
    return DeviceList(devices=_device_views(controller, controller.registry.list_devices()))


@router.get("/{device_id}", response_model=Device, summary="Get one device")
def get_device(device_id: str, controller: ControllerDep) -> Device:
    device = controller.registry.get_device(device_id)
    return _device_views(controller, [device])[0]


@router.get("/{device_id}/telemetry", response_model=TelemetryHistory, summary="Telemetry history")
def get_telemetry(
    device_id: str,
    controller: ControllerDep,
    since: Annotated[
        str | None,
        Query(description="Start of the range (inclusive): ISO 8601 with offset, or Unix s."),
    ] = None,
    until: Annotated[
        str | None,
        Query(description="End of the range (inclusive): ISO 8601 with offset, or Unix s."),
    ] = None,
    step: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_STEP_S,
            description="Bucket width in seconds; samples in a bucket are aggregated in SQL. "
            "Without it every sample is returned.",
        ),
    ] = None,
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_TELEMETRY_POINTS, description="Most points returned (the newest)."),
    ] = 1000,
) -> TelemetryHistory:
    """Return a device's samples received in [since, until], optionally in buckets."""
    start = parse_time(since, name="since")
    end = parse_time(until, name="until")
    if start is not None and end is not None and start > end:
        raise ApiError(
            400,
            "invalid_input",
            f"since={since!r} is after until={until!r}; swap them or widen the range",
            field="since",
        )
    registry = controller.registry
    registry.get_device(device_id)
    buckets, truncated = queries.telemetry_history(
        registry.database, device_id, since=start, until=end, step_s=step, limit=limit
    )
    return TelemetryHistory(
        device_id=device_id,
        since=start,
        until=end,
        step_s=step,
        points=[point_schema(bucket) for bucket in buckets],
        truncated=truncated,
    )


@router.get("/{device_id}/ladder", response_model=DeviceLadder, summary="The device's ladder")
def get_ladder(device_id: str, controller: ControllerDep) -> DeviceLadder:
    """Return the ladder of the device's profile for the active model, best rung first."""
    registry = controller.registry
    device = registry.get_device(device_id)
    model = registry.active_model()
    if model is None:
        return DeviceLadder(device_id=device_id, model_id=None, ladder=[])
    variants = queries.list_variants(
        registry.database, model.id, profile_fingerprint=device.profile_fingerprint
    )
    front = {row.variant_id for row in pareto_front(variants)}
    ladder = [row for row in variants if row.ladder_rank is not None]
    return DeviceLadder(
        device_id=device_id,
        model_id=model.id,
        ladder=[variant_schema(row, on_front=row.variant_id in front) for row in ladder],
    )


@router.get(
    "/{device_id}/deployments", response_model=DeploymentList, summary="Deployments of a device"
)
def list_device_deployments(
    device_id: str,
    controller: ControllerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeploymentList:
    """List the device's deployments, newest first."""
    registry = controller.registry
    registry.get_device(device_id)
    rows = queries.list_deployments(registry.database, device_id=device_id, limit=limit)
    return DeploymentList(deployments=[deployment_schema(row) for row in rows])


@router.post(
    "/{device_id}/deployments",
    response_model=Deployment,
    status_code=201,
    summary="Deploy a variant to a device",
)
def deploy(device_id: str, body: DeployRequest, controller: ControllerDep) -> Deployment:
    """Deploy a variant of the active model; the device receives it now or when it connects."""
    row = controller.deploy(device_id, body.variant_id, reason=body.reason)
    logger.info(
        "deployment %s of variant %s to device %s requested through the HTTP API",
        row.id,
        row.variant_id,
        device_id,
        extra={"device_id": device_id, "deployment_id": row.id},
    )
    return deployment_schema(row)


@router.put("/{device_id}/pin", response_model=Device, summary="Pin a device")
def pin(device_id: str, controller: ControllerDep, body: PinRequest | None = None) -> Device:
    """Pin the device so the policy leaves it alone, after deploying ``variant_id`` if given."""
    body = body or PinRequest()
    device = controller.registry.get_device(device_id)
    # Pin first, so the policy cannot move the device between the deployment and the pin.
    controller.set_pinned(device_id, True)
    if body.variant_id is not None:
        try:
            controller.deploy(device_id, body.variant_id, reason=body.reason)
        except Exception:
            controller.set_pinned(device_id, device.pinned)
            raise
    logger.info(
        "device %s pinned to %s through the HTTP API",
        device_id,
        body.variant_id or "its current target",
        extra={"device_id": device_id},
    )
    return get_device(device_id, controller)


@router.delete("/{device_id}/pin", response_model=Device, summary="Unpin a device")
def unpin(device_id: str, controller: ControllerDep) -> Device:
    """Unpin the device; the policy may move it again from its next samples on."""
    controller.set_pinned(device_id, False)
    logger.info(
        "device %s unpinned through the HTTP API", device_id, extra={"device_id": device_id}
    )
    return get_device(device_id, controller)
