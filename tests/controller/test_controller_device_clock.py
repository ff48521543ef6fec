"""A device whose clock reads 1970 enrolls, connects over mutual TLS and applies a signed model.

The agent runs as a child process under libfaketime, so gRPC's TLS stack, Python and
onnxruntime all see 1970-01-02 on the device side, while the controller runs on the real
clock in this process.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from controller_support import PROFILE_FIELDS, wait_for

from edgefleet.agent.tensors import array_to_tensor
from edgefleet.controller.models import DeploymentState, DeviceState, PlanState
from edgefleet.controller.registry import VariantRecord
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.v1 import fleet_pb2

DEVICE_TIME = "@1970-01-02 00:00:00"
FAKETIME_HINT = (
    "libfaketime is not installed, and the device clock test needs it; install it with "
    "`apt-get install -y faketime` (make test does this)"
)


def _faketime_environment() -> dict[str, str]:
    libraries = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    if not libraries:
        pytest.fail(FAKETIME_HINT)
    environment = dict(os.environ)
    environment.update(
        LD_PRELOAD=libraries[0],
        FAKETIME=DEVICE_TIME,
        # Only the wall clock is the device's broken one; timers and timeouts keep working.
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    return environment


def _affine_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _store_onnx_ladder(controller: Controller, profile: DeviceProfile) -> str:
    """Store a one-rung ladder holding a real ONNX model; returns its variant id."""
    registry = controller.registry
    model = registry.register_model(
        name="double", digest="d" * 64, source="d.onnx", data_path="d.npz", weights_path=None
    )
    registry.register_device("ladder-owner", profile)
    data = _affine_onnx()
    sha256 = hashlib.sha256(data).hexdigest()
    controller.artifacts.put_bytes(data, expected_sha256=sha256)
    test_input = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    spec = fleet_pb2.TensorSpec(name="x", type=fleet_pb2.TENSOR_TYPE_FLOAT32, shape=[-1, 4])
    out = fleet_pb2.TensorSpec(name="y", type=fleet_pb2.TENSOR_TYPE_FLOAT32, shape=[-1, 4])
    manifest = fleet_pb2.VariantManifest(
        variant_id=sha256[:16],
        model_id=model.id,
        recipe_json="[]",
        sha256=sha256,
        size_bytes=len(data),
        inputs=[spec],
        outputs=[out],
        self_test=fleet_pb2.SelfTest(
            input=array_to_tensor(test_input),
            expected_output=array_to_tensor(test_input * 2),
            rtol=1e-5,
            atol=1e-6,
        ),
        opset=13,
    )
    record = VariantRecord(
        variant_id=manifest.variant_id,
        recipe_json="[]",
        sha256=sha256,
        size_bytes=len(data),
        accuracy=0.9,
        latency_p95_ms=1.0,
        host_latency_p95_ms=1.0,
        peak_memory_mb=10.0,
        manifest=manifest.SerializeToString(),
        ladder_rank=0,
    )
    plan = registry.create_plan(model.id, profile.fingerprint, latency_scale=1.0)
    registry.store_variants(model.id, profile.fingerprint, [record], plan_id=plan.id)
    registry.update_plan(plan.id, state=PlanState.DONE, reason="test ladder")
    registry.delete_device("ladder-owner")
    return manifest.variant_id


def _write_profile(path: Path) -> Path:
    lines = []
    for key, value in PROFILE_FIELDS.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(item) for item in value)}]".replace("'", '"'))
        else:
            lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_device_at_1970_enrolls_connects_and_deploys(
    controller: Controller, profile: DeviceProfile, tmp_path: Path
) -> None:
    port = controller.serve_grpc(host="127.0.0.1", port=0, tls=True, enroll_port=0)
    variant_id = _store_onnx_ladder(controller, profile)
    token = controller.create_enrollment_token(ttl=timedelta(minutes=5))
    environment = _faketime_environment()
    state_dir = tmp_path / "device"
    edgefleet = [sys.executable, "-m", "edgefleet"]

    enrolled = subprocess.run(
        [
            *edgefleet, "enroll",
            "--controller", f"127.0.0.1:{controller.enroll_port}",
            "--token", token.token,
            "--device-id", "old-clock",
            "--state-dir", str(state_dir),
        ],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr

    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            [
                *edgefleet, "agent", "run",
                "--controller", f"127.0.0.1:{port}",
                "--profile", str(_write_profile(tmp_path / "board.toml")),
                "--device-id", "old-clock",
                "--state-dir", str(state_dir),
            ],
            env=environment, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(
                lambda: (
                    (device := controller.registry.find_device("old-clock")) is not None
                    and device.current_variant_id == variant_id
                ),
                timeout_s=90,
            )
            device = controller.registry.get_device("old-clock")
        finally:
            agent.terminate()
            agent.wait(timeout=30)

    agent_log = log_path.read_text(errors="replace")
    assert agent_log.startswith("1970-01-02"), agent_log[:200]
    assert "manifest rejected" not in agent_log
    assert device.state in (DeviceState.ONLINE, DeviceState.OFFLINE)
    deployment = controller.registry.latest_deployment("old-clock")
    assert deployment is not None
    assert deployment.state is DeploymentState.ACTIVE
    # The agent checked the signed manifest (it records the version it accepted), and
    # its expiry check ran on the controller's time, not on 1970.
    state = json.loads((state_dir / "state.json").read_text())
    assert state["manifest_version"] == deployment.manifest_version
    assert state["time_floor_ms"] > 1_700_000_000_000
