"""Routes under ``/api/v1/rollouts``: staged rollouts through the ``RolloutManager``."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from edgefleet.controller.api.errors import ApiError
from edgefleet.controller.api.schemas import (
    Rollout,
    RolloutActionRequest,
    RolloutList,
    RolloutRequest,
    StartedRollout,
)
from edgefleet.controller.models import RolloutState
from edgefleet.controller.rollouts import RolloutManager

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


def get_rollouts(request: Request) -> RolloutManager:
    return request.app.state.rollouts


RolloutsDep = Annotated[RolloutManager, Depends(get_rollouts)]


def _rollout_schema(snapshot: Any) -> Rollout:
    data = snapshot.to_dict()
    data["rollout_id"] = data.pop("id")
    return Rollout.model_validate(data)


@router.get("", response_model=RolloutList, summary="List rollouts")
def list_rollouts(
    rollouts: RolloutsDep,
    state: Annotated[
        list[RolloutState] | None, Query(description="Only rollouts in these states.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RolloutList:
    """Rollouts, newest first."""
    snapshots = rollouts.list(states=state or None, limit=limit)
    return RolloutList(rollouts=[_rollout_schema(snapshot) for snapshot in snapshots])


@router.post("", response_model=StartedRollout, status_code=201, summary="Start a rollout")
def start_rollout(body: RolloutRequest, rollouts: RolloutsDep) -> StartedRollout:
    """Start rolling a model out in waves; the first wave starts at once.

    Devices that need a deployment come first in the waves, online before offline. The
    response lists the offline target devices, and those that ``online_only`` left out.
    """
    options: dict[str, Any] = {
        "gates": body.gates,
        "variants": body.variants,
        "online_only": body.online_only,
    }
    if body.waves is not None:
        if isinstance(body.waves, list) and not body.waves:
            raise ApiError(
                400,
                "invalid_input",
                "waves is an empty list; give cumulative sizes ending at 100%, e.g. "
                '["1", "25%", "100%"], or leave it out for the default',
                field="waves",
            )
        options["waves"] = body.waves
    snapshot = rollouts.start(body.model_id, body.target, **options)
    logger.info(
        "rollout %s started through the HTTP API",
        snapshot.id,
        extra={"rollout_id": snapshot.id},
    )
    data = snapshot.to_dict()
    data["rollout_id"] = data.pop("id")
    return StartedRollout.model_validate(data)


@router.get("/{rollout_id}", response_model=Rollout, summary="Get one rollout")
def get_rollout(rollout_id: str, rollouts: RolloutsDep) -> Rollout:
    return _rollout_schema(rollouts.get(rollout_id))


@router.post("/{rollout_id}/pause", response_model=Rollout, summary="Pause a rollout")
def pause_rollout(
    rollout_id: str, rollouts: RolloutsDep, body: RolloutActionRequest | None = None
) -> Rollout:
    """Stop starting deployments; those in flight finish and the gates keep running."""
    reason = body.reason if body is not None else ""
    return _rollout_schema(rollouts.pause(rollout_id, reason=reason))


@router.post("/{rollout_id}/resume", response_model=Rollout, summary="Resume a rollout")
def resume_rollout(rollout_id: str, rollouts: RolloutsDep) -> Rollout:
    return _rollout_schema(rollouts.resume(rollout_id))


@router.post("/{rollout_id}/abort", response_model=Rollout, summary="Abort a rollout")
def abort_rollout(
    rollout_id: str, rollouts: RolloutsDep, body: RolloutActionRequest | None = None
) -> Rollout:
    """End the rollout and send every device it updated back to its previous variant."""
    reason = body.reason if body is not None else ""
    return _rollout_schema(rollouts.abort(rollout_id, reason=reason))
