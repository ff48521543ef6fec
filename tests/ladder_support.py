"""Small real ONNX variants, stored as one-rung ladders without running the compressor."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent.tensors import array_to_tensor
from edgefleet.controller.models import PlanState
from edgefleet.controller.registry import VariantRecord
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.v1 import fleet_pb2

# 1100 x 1100 float32 weights make a file of about 4.8 MB: five 1 MiB gRPC chunks.
LARGE_FEATURES = 1100


def linear_variant(features: int, *, scale: float = 1.0) -> tuple[bytes, fleet_pb2.VariantManifest]:
    """Return an ONNX model computing ``x @ (scale * I)`` and its manifest with a self-test."""
    weights = np.eye(features, dtype=np.float32) * np.float32(scale)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)

    data = model.SerializeToString()
    sha256 = hashlib.sha256(data).hexdigest()

    test_input = np.linspace(-1, 1, 2 * features, dtype=np.float32).reshape(2, features)
    spec = fleet_pb2.TensorSpec(name="x", type=fleet_pb2.TENSOR_TYPE_FLOAT32, shape=[-1, features])
    manifest = fleet_pb2.VariantManifest(
        variant_id=sha256[:16],
        recipe_json="[]",
        sha256=sha256,
        size_bytes=len(data),
        inputs=[spec],
        outputs=[fleet_pb2.TensorSpec(name="y", type=spec.type, shape=spec.shape)],
        self_test=fleet_pb2.SelfTest(
            input=array_to_tensor(test_input),
            expected_output=array_to_tensor(test_input * np.float32(scale)),
            rtol=1e-5,
            atol=1e-5,
        ),
        opset=13,
    )
    return data, manifest


def store_ladder(
    controller: Controller,
    profile: DeviceProfile,
    data: bytes,
    manifest: fleet_pb2.VariantManifest,
    *,
    peak_memory_mb: float = 30.0,
) -> fleet_pb2.VariantManifest:
    """Store ``data`` as the only rung of a new model's ladder for ``profile``.

    Returns the manifest with the model's id filled in.
    """
    registry = controller.registry
    model = registry.register_model(
        name="linear",
        digest=manifest.sha256,
        source="linear.onnx",
        data_path="linear.npz",
        weights_path=None,
    )
    # Plans and variants belong to a profile that some device has registered with.
    registry.register_device("ladder-owner", profile)
    controller.artifacts.put_bytes(data, expected_sha256=manifest.sha256)
    manifest.model_id = model.id
    record = VariantRecord(
        variant_id=manifest.variant_id,
        recipe_json="[]",
        sha256=manifest.sha256,
        size_bytes=len(data),
        accuracy=0.9,
        latency_p95_ms=1.0,
        host_latency_p95_ms=1.0,
        peak_memory_mb=peak_memory_mb,
        manifest=manifest.SerializeToString(),
        ladder_rank=0,
    )
    plan = registry.create_plan(model.id, profile.fingerprint, latency_scale=1.0)
    registry.store_variants(model.id, profile.fingerprint, [record], plan_id=plan.id)
    registry.update_plan(plan.id, state=PlanState.DONE, reason="test ladder")
    registry.delete_device("ladder-owner")
    return manifest
