"""A real controller stopped in the middle of an artifact transfer, and an agent process
that must resume the transfer and end on the verified variant."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import onnx
import pytest
from fleet_support import fleet_config, wait_for, write_profile
from onnx import TensorProto, helper, numpy_helper

import edgefleet.controller.grpc_server as grpc_server
from edgefleet.agent.store import AgentStore
from edgefleet.agent.tensors import array_to_tensor
from edgefleet.controller.models import PlanState
from edgefleet.controller.registry import VariantRecord
from edgefleet.profiles import load_profile
from edgefleet.protos.v1 import fleet_pb2

pytestmark = pytest.mark.slow

# 1100 x 1100 float32 weights make the file about 4.8 MB: five 1 MiB gRPC chunks.
FEATURES = 1100


def build_variant() -> tuple[bytes, fleet_pb2.VariantManifest]:
    """Return an ONNX model computing ``2 x`` and its manifest with a self-test."""
    weights = np.eye(FEATURES, dtype=np.float32) * np.float32(2.0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", FEATURES])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    sha256 = hashlib.sha256(data).hexdigest()
    test_input = np.linspace(-1, 1, 2 * FEATURES, dtype=np.float32).reshape(2, FEATURES)
    spec = fleet_pb2.TensorSpec(name="x", type=fleet_pb2.TENSOR_TYPE_FLOAT32, shape=[-1, FEATURES])
    manifest = fleet_pb2.VariantManifest(
        variant_id=sha256[:16],
        recipe_json="[]",
        sha256=sha256,
        size_bytes=len(data),
        inputs=[spec],
        outputs=[fleet_pb2.TensorSpec(name="y", type=spec.type, shape=spec.shape)],
        self_test=fleet_pb2.SelfTest(
            input=array_to_tensor(test_input),
            expected_output=array_to_tensor(test_input * np.float32(2.0)),
            rtol=1e-5,
            atol=1e-5,
        ),
        opset=13,
    )
    return data, manifest


def store_ladder(controller, profile_path) -> fleet_pb2.VariantManifest:
    """Store a one-rung ladder for the profile, skipping compression."""
    data, manifest = build_variant()
    profile = load_profile(profile_path)
    registry = controller.registry
    model = registry.register_model(
        name="double", digest="2" * 64, source="double.onnx", data_path="x.npz", weights_path=None
    )
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
        peak_memory_mb=30.0,
        manifest=manifest.SerializeToString(),
        ladder_rank=0,
    )
    plan = registry.create_plan(model.id, profile.fingerprint, latency_scale=1.0)
    registry.store_variants(model.id, profile.fingerprint, [record], plan_id=plan.id)
    registry.update_plan(plan.id, state=PlanState.DONE, reason="test ladder")
    registry.delete_device("ladder-owner")
    return manifest


def serving_variant(agent) -> str | None:
    health = agent.health()
    return health.get("variant_id") if health else None


def test_controller_stopped_mid_transfer_resumes(
    start_controller, start_agent, tmp_path, monkeypatch
):
    fleet = start_controller(fleet_config())
    profile = write_profile(tmp_path / "shared.toml", "outage-board")
    manifest = store_ladder(fleet.controller, profile)
    served: list[int] = []
    original = grpc_server.open_artifact

    def slow_artifact(controller, request):
        # Chunks leave slowly, so that the controller stops in the middle of the transfer.
        total, chunks = original(controller, request)

        def paced():
            for offset, data in chunks:
                time.sleep(0.3)
                served.append(offset)
                yield offset, data

        return total, paced()

    monkeypatch.setattr(grpc_server, "open_artifact", slow_artifact)
    agent = start_agent("pi-outage", fleet.port, profile_name="outage-board")
    wait_for(lambda: len(served) >= 2, timeout_s=60, what="the first chunks")

    stopper = threading.Thread(target=fleet.stop)
    stopper.start()
    stopper.join(timeout=10)
    part = AgentStore(agent.state_dir).part_path(manifest.sha256)
    cut_at = part.stat().st_size
    assert 0 < cut_at < manifest.size_bytes, "the transfer was not cut in the middle"
    monkeypatch.setattr(grpc_server, "open_artifact", original)
    fleet.start()

    wait_for(lambda: serving_variant(agent) == manifest.variant_id, timeout_s=90, what="deploy")
    assert "resuming download of" in agent.log()
    installed = AgentStore(agent.state_dir).model_path(manifest.sha256).read_bytes()
    assert hashlib.sha256(installed).hexdigest() == manifest.sha256
    assert AgentStore(agent.state_dir).state.current == manifest.sha256
