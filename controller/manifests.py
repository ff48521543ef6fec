"""Variant manifests: everything an agent needs to fetch, check and load a variant."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edgefleet.agent.tensors import array_to_tensor
from edgefleet.controller.errors import PlanningError
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["build_manifest", "recipe_json"]

_DTYPE_TO_TENSOR_TYPE = {
    "float32": fleet_pb2.TENSOR_TYPE_FLOAT32,
    "float16": fleet_pb2.TENSOR_TYPE_FLOAT16,
    "int64": fleet_pb2.TENSOR_TYPE_INT64,
    "int32": fleet_pb2.TENSOR_TYPE_INT32,
    "uint8": fleet_pb2.TENSOR_TYPE_UINT8,
    "int8": fleet_pb2.TENSOR_TYPE_INT8,
}


def recipe_json(recipe: Sequence[Any]) -> str:
    """Serialize a compress ``Recipe`` (or a plain tuple of configs) as JSON."""
    to_json = getattr(recipe, "to_json", None)
    if callable(to_json):
        return to_json()
    return json.dumps([config.to_dict() for config in recipe], sort_keys=True)


def build_manifest(report: Any, *, model_id: str) -> fleet_pb2.VariantManifest:
    """Build the manifest of a ``edgefleet.compress.VariantReport``.

    Raises ``PlanningError`` when the report has a tensor type the protocol cannot carry.
    """
    return fleet_pb2.VariantManifest(
        variant_id=report.variant_id,
        model_id=model_id,
        recipe_json=recipe_json(report.recipe),
        sha256=report.sha256,
        size_bytes=report.size_bytes,
        inputs=[_tensor_spec(spec) for spec in report.inputs],
        outputs=[_tensor_spec(spec) for spec in report.outputs],
        metrics=fleet_pb2.VariantMetrics(
            accuracy=report.accuracy,
            latency_p95_ms=report.latency_p95_ms,
            peak_memory_mb=report.peak_memory_mb,
        ),
        self_test=fleet_pb2.SelfTest(
            input=array_to_tensor(report.self_test_input),
            expected_output=array_to_tensor(report.self_test_expected),
            rtol=report.rtol,
            atol=report.atol,
        ),
        opset=report.opset,
    )


def _tensor_spec(spec: Any) -> fleet_pb2.TensorSpec:
    tensor_type = _DTYPE_TO_TENSOR_TYPE.get(spec.dtype)
    if tensor_type is None:
        raise PlanningError(
            f"tensor {spec.name!r} has dtype {spec.dtype!r}, which the protocol cannot carry; "
            f"supported dtypes are {', '.join(sorted(_DTYPE_TO_TENSOR_TYPE))}"
        )
    return fleet_pb2.TensorSpec(name=spec.name, type=tensor_type, shape=list(spec.shape))
