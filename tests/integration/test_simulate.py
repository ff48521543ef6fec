"""The fleet simulator against a real in-process controller, over gRPC and over a real Mosquitto."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from fleet_support import fleet_config
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgefleet.agent.simulate import DEFAULT_PROFILE, SimulationConfig, run_simulation
from edgefleet.agent.transport import TransportKind
from edgefleet.cli import app
from edgefleet.controller.models import DeploymentState, PlanState
from edgefleet.controller.registry import VariantRecord
from edgefleet.controller.service import Controller
from edgefleet.errors import InvalidInputError
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.mqtt import BrokerSettings
from edgefleet.protos.v1 import fleet_pb2

AGENTS = 20
FEATURES = 32
DURATION_S = 8.0


def store_small_ladder(controller: Controller, profile: DeviceProfile) -> str:
    """Store a one-rung ladder with a small real ONNX variant for ``profile``; returns its id."""
    weights = np.eye(FEATURES, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", FEATURES])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model_proto.ir_version = 7
    data = model_proto.SerializeToString()
    sha256 = hashlib.sha256(data).hexdigest()
    spec = fleet_pb2.TensorSpec(name="x", type=fleet_pb2.TENSOR_TYPE_FLOAT32, shape=[-1, FEATURES])
    out = fleet_pb2.TensorSpec(name="y", type=fleet_pb2.TENSOR_TYPE_FLOAT32, shape=[-1, FEATURES])

    registry = controller.registry
    model = registry.register_model(
        name="linear", digest="2" * 64, source="linear.onnx", data_path="x.npz", weights_path=None
    )
    manifest = fleet_pb2.VariantManifest(
        variant_id=sha256[:16],
        model_id=model.id,
        recipe_json="[]",
        sha256=sha256,
        size_bytes=len(data),
        inputs=[spec],
        outputs=[out],
        opset=13,
    )
    registry.register_device("ladder-owner", profile)
    controller.artifacts.put_bytes(data, expected_sha256=sha256)
    record = VariantRecord(
        variant_id=manifest.variant_id,
        recipe_json="[]",
        sha256=sha256,
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
    return manifest.variant_id


def assert_fleet_deployed(controller: Controller, report: dict, variant_id: str) -> None:
    assert report["agents_connected"] == AGENTS
    assert report["agents_deployed"] == AGENTS
    assert report["deployments_failed"] == 0
    assert report["deploy_seconds"] is not None
    assert 0 <= report["deploy_seconds"] < DURATION_S
    assert report["telemetry_sent"] >= AGENTS * 2
    # Samples sent in the last moments before the agents stopped may never arrive.
    assert 0 < report["telemetry_ingested"] <= report["telemetry_sent"]
    assert report["telemetry_ingested"] >= report["telemetry_sent"] * 0.8
    assert report["ingest_msgs_per_s"] > 0
    assert 0 <= report["ingest_lag_p99_ms"] < 5000
    for index in range(AGENTS):
        deployment = controller.registry.latest_deployment(f"sim-{index:05d}")
        assert deployment is not None
        assert deployment.state is DeploymentState.ACTIVE
        assert deployment.variant_id == variant_id


def test_simulate_grpc_fleet_through_cli(start_controller):
    fleet = start_controller(fleet_config())
    controller = fleet.controller
    variant_id = store_small_ladder(controller, DEFAULT_PROFILE)

    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--agents", str(AGENTS),
            "--transport", "grpc",
            "--controller", f"127.0.0.1:{fleet.port}",
            "--duration", str(DURATION_S),
            "--processes", "2",
            "--telemetry-interval", "0.5",
            "--db", controller.database_url,
            "--json",
        ],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["transport"] == "grpc"
    assert_fleet_deployed(controller, report, variant_id)


def test_simulate_mqtt_fleet(broker, start_controller):
    fleet = start_controller(fleet_config())
    controller = fleet.controller
    settings = BrokerSettings.from_options(broker.url)
    controller.serve_mqtt(settings)
    variant_id = store_small_ladder(controller, DEFAULT_PROFILE)

    config = SimulationConfig(
        agents=AGENTS,
        transport=TransportKind.MQTT,
        duration_s=DURATION_S,
        broker=settings,
        processes=2,
        telemetry_interval_s=0.5,
        db_url=controller.database_url,
    )
    report = run_simulation(config).to_dict()

    assert report["transport"] == "mqtt"
    assert_fleet_deployed(controller, report, variant_id)


def test_simulate_without_database_reports_no_ingest(start_controller):
    fleet = start_controller(fleet_config())
    config = SimulationConfig(
        agents=2,
        transport=TransportKind.GRPC,
        duration_s=2.0,
        controller=f"127.0.0.1:{fleet.port}",
    )
    report = run_simulation(config)

    assert report.agents_connected == 2
    assert report.telemetry_ingested is None
    assert report.ingest_msgs_per_s is None
    assert report.ingest_lag_p99_ms is None
    assert report.deploy_seconds is None  # no model is registered, so nothing deploys


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"agents": 0}, "agents must be"),
        ({"processes": 3, "agents": 2}, "processes must be"),
        ({"duration_s": 0.0}, "duration_s must be"),
        ({"transport": TransportKind.MQTT}, "needs a broker URL"),
        ({"controller": ""}, "needs a controller address"),
        ({"device_prefix": "bad/prefix"}, "device"),
    ],
)
def test_simulation_config_rejects_invalid(fields, message):
    base = {
        "agents": 2,
        "transport": TransportKind.GRPC,
        "duration_s": 1.0,
        "controller": "127.0.0.1:1",
    }
    with pytest.raises(InvalidInputError, match=message):
        SimulationConfig(**{**base, **fields})
