"""The fleet simulator against a real in-process controller, over gRPC and over a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time

import pytest
from fleet_support import fleet_config
from ladder_support import linear_variant, store_ladder
from typer.testing import CliRunner

from edgefleet.agent import simulate
from edgefleet.agent.simulate import (
    DEFAULT_PROFILE,
    SimulationConfig,
    _TelemetryModel,
    run_simulation,
)
from edgefleet.agent.simulate_grpc import GrpcLink
from edgefleet.agent.transport import REGISTER_TIMEOUT_S, TransportKind
from edgefleet.cli import app
from edgefleet.controller.models import DeploymentState
from edgefleet.controller.service import Controller
from edgefleet.errors import InvalidInputError
from edgefleet.protos.mqtt import BrokerSettings
from edgefleet.protos.v1 import fleet_pb2

AGENTS = 20
FEATURES = 32
# Long enough for every agent to register, download and report ACTIVE on a loaded 2-core CI host.
DURATION_S = 15.0


def assert_fleet_deployed(controller: Controller, report: dict, variant_id: str) -> None:
    latest = {
        f"sim-{index:05d}": controller.registry.latest_deployment(f"sim-{index:05d}")
        for index in range(AGENTS)
    }
    # On failure, the message contains the report's error examples and each device's
    # deployment state.
    states = {
        device: deployment and deployment.state.value for device, deployment in latest.items()
    }
    assert report["agents_connected"] == AGENTS, report
    assert report["agents_deployed"] == AGENTS, (report, states)
    assert report["deployments_failed"] == 0
    assert report["deploy_seconds"] is not None
    assert 0 <= report["deploy_seconds"] < DURATION_S
    assert report["telemetry_sent"] >= AGENTS * 2
    # Samples sent in the last moments before the agents stopped may never arrive.
    assert 0 < report["telemetry_ingested"] <= report["telemetry_sent"]
    assert report["telemetry_ingested"] >= report["telemetry_sent"] * 0.8
    assert report["ingest_msgs_per_s"] > 0
    assert 0 <= report["ingest_lag_p99_ms"] < 5000
    for deployment in latest.values():
        assert deployment is not None
        assert deployment.state is DeploymentState.ACTIVE
        assert deployment.variant_id == variant_id


def test_simulate_grpc_fleet_through_cli(start_controller):
    fleet = start_controller(fleet_config())
    controller = fleet.controller
    variant_id = store_ladder(controller, DEFAULT_PROFILE, *linear_variant(FEATURES)).variant_id

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
    variant_id = store_ladder(controller, DEFAULT_PROFILE, *linear_variant(FEATURES)).variant_id

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


def test_simulate_reports_error_causes():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = SimulationConfig(
        agents=2, transport=TransportKind.GRPC, duration_s=2.0, controller=f"127.0.0.1:{port}"
    )
    report = run_simulation(config)

    assert report.agents_connected == 0
    assert report.errors > 0
    assert 0 < len(report.error_examples) <= report.errors
    assert report.error_examples[0].startswith("ControllerUnavailable: ")
    assert f"registration at 127.0.0.1:{port} failed: UNAVAILABLE: " in report.error_examples[0]


def test_simulate_names_overrunning_agent_step(monkeypatch):
    """A socket that accepts connections and sends nothing keeps Register waiting past the end."""
    monkeypatch.setattr(simulate, "_STOP_GRACE_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config = SimulationConfig(
            agents=1,
            transport=TransportKind.GRPC,
            duration_s=1.0,
            controller=f"127.0.0.1:{silent.getsockname()[1]}",
        )
        report = run_simulation(config)

    assert report.agents_connected == 0
    assert report.errors == 1
    assert report.error_examples == ["cancelled 0.5 s after the deadline, still registering"]
    assert report.duration_s < REGISTER_TIMEOUT_S


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


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ("plain/path.db", "invalid --db URL 'plain/path.db'"),
        ("sqlite:///{tmp}/missing/x.db", "no database file at"),
        ("sqlite:///{tmp}/empty.db", "is not an edgefleet controller database"),
    ],
)
def test_simulate_checks_database_before_running(tmp_path, db, message):
    (tmp_path / "empty.db").write_bytes(b"")
    url = db.format(tmp=tmp_path)

    result = CliRunner().invoke(
        app,
        ["simulate", "--agents", "1", "--duration", "60", "--controller", "127.0.0.1:1",
         "--db", url],
        env={"COLUMNS": "200"},
    )  # fmt: skip

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "missing").exists()


def test_simulate_rejects_zero_processes():
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--agents", "2",
            "--duration", "5",
            "--controller", "127.0.0.1:1",
            "--processes", "0",
        ],
        env={"COLUMNS": "200"},
    )  # fmt: skip

    assert result.exit_code == 2, result.output
    assert "processes must be between 1 and the number of agents, got 0" in result.output


def test_grpc_link_serializes_concurrent_writes(start_controller):
    """A deployment report and a telemetry sample may be written at the same moment."""
    fleet = start_controller(fleet_config())
    controller = fleet.controller
    messages = 50

    async def send_together() -> int:
        link = GrpcLink(f"127.0.0.1:{fleet.port}", "sim-writes")
        try:
            await link.register(
                fleet_pb2.RegisterRequest(
                    device_id="sim-writes",
                    profile=DEFAULT_PROFILE.to_proto(),
                    agent_version="test",
                    onnxruntime_version="simulated",
                )
            )
            await link.open_session("")
            telemetry = _TelemetryModel(DEFAULT_PROFILE, random.Random(0))
            await asyncio.gather(
                *(
                    link.send(fleet_pb2.AgentMessage(telemetry=telemetry.sample("sim-writes", "")))
                    for _ in range(messages)
                )
            )
            # The session stays open until the controller has stored what it was sent.
            deadline = time.monotonic() + 30
            while (stored := controller.registry.count_telemetry("sim-writes")) < messages:
                if time.monotonic() > deadline or link.lost.is_set():
                    break
                await asyncio.sleep(0.1)
            return stored
        finally:
            await link.close()

    assert asyncio.run(send_together()) == messages
