"""Routes for models, their variants and deployments across the fleet."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.api import queries
from edgefleet.controller.api.convert import deployment_schema, pareto_front, variant_schema
from edgefleet.controller.api.devices import ControllerDep
from edgefleet.controller.api.errors import ApiError
from edgefleet.controller.api.schemas import (
    Deployment,
    DeploymentList,
    Model,
    ModelList,
    ModelVariants,
    ProfileVariants,
)
from edgefleet.controller.models import DeploymentState, ModelRow
from edgefleet.controller.service import Controller
from edgefleet.errors import InvalidInputError

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["models", "deployments"])


def _model_schema(controller: Controller, row: ModelRow, *, active_id: str | None) -> Model:
    plans: dict[str, str] = {}
    # list_plans returns oldest first, so the newest plan of each profile wins.
    for plan in controller.registry.list_plans(model_id=row.id):
        plans[plan.profile_fingerprint] = plan.state.value
    return Model(
        model_id=row.id,
        name=row.name,
        digest=row.digest,
        source=row.source,
        active=row.id == active_id,
        created_at=row.created_at,
        registered_at=row.registered_at,
        plans=plans,
    )


@router.get("/models", response_model=ModelList, summary="List models")
def list_models(controller: ControllerDep) -> ModelList:
    """List models; the most recently registered one is active and serves devices."""
    rows = queries.list_models(controller.registry.database)
    active_id = rows[0].id if rows else None
    return ModelList(
        active_model_id=active_id,
        models=[_model_schema(controller, row, active_id=active_id) for row in rows],
    )


@router.get("/models/{model_id}", response_model=Model, summary="Get one model")
def get_model(model_id: str, controller: ControllerDep) -> Model:
    row = controller.registry.get_model(model_id)
    active = controller.registry.active_model()
    return _model_schema(controller, row, active_id=active.id if active else None)


@router.get(
    "/models/{model_id}/variants", response_model=ModelVariants, summary="Variants of a model"
)
def list_model_variants(
    model_id: str,
    controller: ControllerDep,
    profile: Annotated[
        str | None, Query(description="Only this profile fingerprint (or its name).")
    ] = None,
) -> ModelVariants:
    """List every variant per profile with its metrics, the Pareto front and the ladder."""
    registry = controller.registry
    registry.get_model(model_id)
    names = queries.list_profiles(registry.database)
    fingerprint = None
    if profile is not None:
        fingerprint = _resolve_profile(profile, names)
    rows = queries.list_variants(registry.database, model_id, profile_fingerprint=fingerprint)

    by_profile: dict[str, list] = {}
    for row in rows:
        by_profile.setdefault(row.profile_fingerprint, []).append(row)
    profiles = []
    for key, variants in by_profile.items():
        front = pareto_front(variants)
        front_ids = {row.variant_id for row in front}
        ladder = sorted(
            (row for row in variants if row.ladder_rank is not None),
            key=lambda row: row.ladder_rank,
        )
        profiles.append(
            ProfileVariants(
                profile_fingerprint=key,
                profile_name=names.get(key, ""),
                variants=[
                    variant_schema(row, on_front=row.variant_id in front_ids) for row in variants
                ],
                pareto_front=[row.variant_id for row in front],
                ladder=[row.variant_id for row in ladder],
            )
        )
    return ModelVariants(model_id=model_id, profiles=profiles)


def _resolve_profile(value: str, names: dict[str, str]) -> str:
    if value in names:
        return value
    matches = [fingerprint for fingerprint, name in names.items() if name == value]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(set(names.values()))) or "none yet"
    raise ApiError(
        404,
        "profile_not_found",
        f"no profile with fingerprint or name {value!r}"
        + ("" if not matches else " (the name is ambiguous; pass the fingerprint)")
        + f"; known profiles: {known}",
        field="profile",
    )


@router.post("/models", response_model=Model, status_code=201, summary="Register a model")
async def register_model(
    controller: ControllerDep,
    model: Annotated[UploadFile, File(description="The trained model as an .onnx file.")],
    data: Annotated[
        UploadFile,
        File(description="Evaluation data: .npz with x_train, y_train, x_val and y_val."),
    ],
    name: Annotated[
        str | None, Form(max_length=128, description="Display name; default: file stem.")
    ] = None,
) -> Model:
    """Register an ONNX model with its evaluation data and plan it for every profile.

    The files are kept under the controller's data directory, because the planner reads
    them again for every profile and recompression.
    """
    model_name = Path(model.filename or "").name
    data_name = Path(data.filename or "").name
    if not model_name.endswith(".onnx"):
        raise ApiError(
            400,
            "invalid_input",
            f"model file {model.filename!r} is not an .onnx file; upload the model exported "
            "to ONNX as the 'model' part",
            field="model",
        )
    if not data_name.endswith(".npz"):
        raise ApiError(
            400,
            "invalid_input",
            f"data file {data.filename!r} is not an .npz file; upload an .npz with "
            "x_train, y_train, x_val and y_val as the 'data' part",
            field="data",
        )
    row = await run_in_threadpool(
        _store_and_register,
        controller,
        model,
        data,
        model_name=model_name,
        data_name=data_name,
        name=name,
    )
    active = controller.registry.active_model()
    return _model_schema(controller, row, active_id=active.id if active else None)


def _store_and_register(
    controller: Controller,
    model: UploadFile,
    data: UploadFile,
    *,
    model_name: str,
    data_name: str,
    name: str | None,
) -> ModelRow:
    uploads = controller.data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=uploads) as staging:
        staged_model = Path(staging) / model_name
        staged_data = Path(staging) / data_name
        key = hashlib.sha256()
        for upload, target in ((model, staged_model), (data, staged_data)):
            key.update(f"{target.name}={_copy_upload(upload, target)}\n".encode())
        _check_onnx(staged_model)
        _check_dataset(staged_data)

        # Keyed by the files' names and contents, so uploading the same files again
        # reuses the folder. os.replace is atomic: two identical uploads at once leave
        # one complete copy.
        folder = uploads / key.hexdigest()[:16]
        folder.mkdir(exist_ok=True)
        os.replace(staged_model, folder / model_name)
        os.replace(staged_data, folder / data_name)
    try:
        row = controller.register_model(
            str(folder / model_name), data_path=folder / data_name, name=name or None
        )
    except InvalidInputError:
        sources = {row.source for row in queries.list_models(controller.registry.database)}
        if str(folder / model_name) not in sources:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    logger.info("model %s (%s) registered through the HTTP API", row.name, row.id)
    return row


def _copy_upload(upload: UploadFile, target: Path) -> str:
    """Copy an uploaded file to ``target`` and return its sha256."""
    digest = hashlib.sha256()
    upload.file.seek(0)
    with target.open("wb") as out:
        while chunk := upload.file.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _check_onnx(path: Path) -> None:
    import onnx

    from edgefleet.onnx_files import external_data_locations

    try:
        locations = external_data_locations(onnx.load(str(path), load_external_data=False))
    except Exception:  # protobuf's DecodeError, OSError: the checker below names it
        locations = []
    if locations:
        raise ApiError(
            400,
            "invalid_input",
            f"model file {path.name!r} keeps its weights in separate files "
            f"({', '.join(locations)}), which an upload does not carry; save it as one file "
            "with onnx.save(onnx.load(path), out_path, save_as_external_data=False), or "
            "upload it with `edgefleet register`, which does that",
            field="model",
        )
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, OSError, ValueError) as exc:
        raise ApiError(
            400,
            "invalid_input",
            f"model file {path.name!r} is not a valid ONNX model: {exc}; export it with "
            "torch.onnx.export or edgefleet.compress.export_onnx",
            field="model",
        ) from exc


def _check_dataset(path: Path) -> None:
    from edgefleet.compress.dataset import load_dataset

    try:
        load_dataset(path)
    except ValueError as exc:
        raise ApiError(400, "invalid_input", f"data file: {exc}", field="data") from exc


@router.get("/deployments", response_model=DeploymentList, summary="List deployments")
def list_deployments(
    controller: ControllerDep,
    device_id: Annotated[str | None, Query(description="Only this device's.")] = None,
    state: Annotated[DeploymentState | None, Query(description="Only in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeploymentList:
    """List deployments across the fleet, newest first."""
    registry = controller.registry
    if device_id is not None:
        registry.get_device(device_id)
    rows = queries.list_deployments(
        registry.database, device_id=device_id, state=state, limit=limit
    )
    return DeploymentList(deployments=[deployment_schema(row) for row in rows])


@router.get("/deployments/{deployment_id}", response_model=Deployment, summary="Get one deployment")
def get_deployment(deployment_id: str, controller: ControllerDep) -> Deployment:
    row = controller.registry.find_deployment(deployment_id)
    if row is None:
        raise ApiError(
            404,
            "deployment_not_found",
            f"no deployment with id {deployment_id!r}; list them with GET /api/v1/deployments",
            field="deployment_id",
        )
    return deployment_schema(row)
