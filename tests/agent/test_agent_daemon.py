from __future__ import annotations

import hashlib
import http.client
import json
import threading

import pytest
from agent_support import build_affine_model, build_manifest, wait_for
from google.protobuf import json_format

from edgefleet.agent.calibration import reference_sha256
from edgefleet.agent.daemon import Agent, AgentConfig
from edgefleet.agent.deploy import MAX_ATTEMPTS
from edgefleet.agent.store import AgentStore, UpdateRecord
from edgefleet.agent.update import UpdateState
from edgefleet.errors import InvalidInputError
from edgefleet.protos.v1 import fleet_pb2

ACTIVE = fleet_pb2.DEPLOYMENT_STATE_ACTIVE
FAILED = fleet_pb2.DEPLOYMENT_STATE_FAILED
# Installing is reported as VERIFYING, and the health check as LOADING.
FULL_PATH = [
    fleet_pb2.DEPLOYMENT_STATE_PENDING,
    fleet_pb2.DEPLOYMENT_STATE_DOWNLOADING,
    fleet_pb2.DEPLOYMENT_STATE_VERIFYING,
    fleet_pb2.DEPLOYMENT_STATE_VERIFYING,
    fleet_pb2.DEPLOYMENT_STATE_LOADING,
    fleet_pb2.DEPLOYMENT_STATE_LOADING,
    ACTIVE,
]


class RunningAgent:
    """An ``Agent`` running in a background thread, stopped at the end of the test."""

    def __init__(self, config: AgentConfig) -> None:
        self.agent = Agent(config)
        self.thread = threading.Thread(target=self.agent.run, name="agent-under-test")
        self.thread.start()

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "agent did not stop within 20 s"

    def infer(self, rows: list[list[float]]) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", self.agent.api_port, timeout=10)
        try:
            connection.request("POST", "/v1/infer", body=json.dumps({"input": rows}))
            response = connection.getresponse()
            assert response.status == 200, response.read()
            return json.loads(response.read())
        finally:
            connection.close()


@pytest.fixture
def start_agent(fleet, profile, tmp_path):
    running: list[RunningAgent] = []

    def start(**overrides) -> RunningAgent:
        settings = {
            "controller": fleet.target,
            "device_id": "pi-0001",
            "profile": profile,
            "state_dir": tmp_path / "state",
            "telemetry_interval_s": 0.2,
            "reconnect_initial_s": 0.1,
            "reconnect_max_s": 0.5,
            "calibration_duration_s": 0.1,
        }
        agent = RunningAgent(AgentConfig(**{**settings, **overrides}))
        running.append(agent)
        return agent

    yield start
    for agent in running:
        if agent.thread.is_alive():
            agent.stop()


def publish_variant(fleet, scale: float, bias: float, **manifest_args) -> fleet_pb2.VariantManifest:
    data = build_affine_model(scale, bias)
    manifest = build_manifest(data, scale=scale, bias=bias, **manifest_args)
    fleet.servicer.artifacts[manifest.sha256] = data
    return manifest


def deploy_command(command_id: str, deployment_id: str, manifest) -> fleet_pb2.Command:
    return fleet_pb2.Command(
        command_id=command_id,
        deploy=fleet_pb2.DeployCommand(deployment_id=deployment_id, manifest=manifest),
    )


def test_daemon_registers_with_calibration(fleet, start_agent, profile):
    start_agent()
    wait_for(lambda: fleet.servicer.registrations, description="registration")

    request = fleet.servicer.registrations[0]
    assert request.device_id == "pi-0001"
    assert request.profile == profile.to_proto()
    assert request.calibration.reference_sha256 == reference_sha256()
    assert request.calibration.threads == profile.inference_threads
    assert request.calibration.runs > 0
    assert request.calibration.latency_p50_ms > 0
    assert request.onnxruntime_version
    assert request.current_variant_id == ""


def test_daemon_session_hello_then_telemetry(fleet, start_agent):
    start_agent()
    wait_for(
        lambda: len(fleet.servicer.of_kind("telemetry")) >= 3, description="3 telemetry samples"
    )

    first = fleet.servicer.messages[0]
    assert first.WhichOneof("body") == "hello"
    assert first.hello.device_id == "pi-0001"
    samples = fleet.servicer.of_kind("telemetry")
    assert [s.seq for s in samples[:3]] == [1, 2, 3]
    assert all(s.device_id == "pi-0001" for s in samples)
    assert all(s.memory_total_mb > 0 for s in samples)


def test_daemon_deploys_once_even_if_sent_twice(fleet, start_agent):
    running = start_agent()
    manifest = publish_variant(fleet, 2.0, 1.0)
    wait_for(lambda: fleet.servicer.open_sessions, description="session")

    command = deploy_command("cmd-1", "dep-1", manifest)
    fleet.servicer.send(command)
    fleet.servicer.send(command)
    wait_for(lambda: ACTIVE in fleet.servicer.statuses("dep-1"), description="ACTIVE")
    seen = len(fleet.servicer.of_kind("telemetry"))
    fleet.servicer.send(command)
    wait_for(lambda: len(fleet.servicer.of_kind("telemetry")) >= seen + 2, description="telemetry")

    assert fleet.servicer.statuses("dep-1") == FULL_PATH
    assert len(fleet.servicer.download_requests) == 1
    result = running.infer([[1, 1, 1, 1]])
    assert result["variant_id"] == manifest.variant_id
    assert result["outputs"]["y"] == [[3.0, 3.0, 3.0, 3.0]]
    assert fleet.servicer.of_kind("telemetry")[-1].variant_id == manifest.variant_id
    assert AgentStore(running.agent.config.state_dir).is_applied("cmd-1")


def test_daemon_bad_sha_fails_deploy(fleet, start_agent):
    running = start_agent()
    good = publish_variant(fleet, 2.0, 1.0)
    wait_for(lambda: fleet.servicer.open_sessions, description="session")
    fleet.servicer.send(deploy_command("cmd-1", "dep-1", good))
    wait_for(lambda: ACTIVE in fleet.servicer.statuses("dep-1"), description="first deployment")

    tampered = publish_variant(fleet, 5.0, 0.0)
    real_bytes = fleet.servicer.artifacts.pop(tampered.sha256)
    tampered.sha256 = hashlib.sha256(b"something else").hexdigest()
    fleet.servicer.artifacts[tampered.sha256] = real_bytes
    fleet.servicer.send(deploy_command("cmd-2", "dep-2", tampered))
    wait_for(lambda: FAILED in fleet.servicer.statuses("dep-2"), description="FAILED")

    failed = [s for s in fleet.servicer.of_kind("status") if s.deployment_id == "dep-2"][-1]
    assert "sha256 mismatch" in failed.message
    assert failed.previous_variant_id == good.variant_id
    assert running.infer([[0, 0, 0, 0]])["variant_id"] == good.variant_id
    assert list((running.agent.config.state_dir / "downloads").iterdir()) == []


def test_daemon_failed_self_test_keeps_model(fleet, start_agent):
    running = start_agent()
    good = publish_variant(fleet, 2.0, 1.0)
    broken = publish_variant(fleet, 3.0, 0.0, expected_shift=1.0)
    wait_for(lambda: fleet.servicer.open_sessions, description="session")
    fleet.servicer.send(deploy_command("cmd-1", "dep-1", good))
    wait_for(lambda: ACTIVE in fleet.servicer.statuses("dep-1"), description="first deployment")

    fleet.servicer.send(deploy_command("cmd-2", "dep-2", broken))
    wait_for(lambda: FAILED in fleet.servicer.statuses("dep-2"), description="FAILED")

    failed = [s for s in fleet.servicer.of_kind("status") if s.deployment_id == "dep-2"][-1]
    assert "self-test" in failed.message
    assert running.infer([[0, 0, 0, 0]])["variant_id"] == good.variant_id


def test_daemon_reconnects_after_restart(fleet, start_agent):
    running = start_agent()
    manifest = publish_variant(fleet, 2.0, 1.0)
    wait_for(lambda: fleet.servicer.open_sessions, description="session")
    fleet.servicer.send(deploy_command("cmd-1", "dep-1", manifest))
    wait_for(lambda: ACTIVE in fleet.servicer.statuses("dep-1"), description="deployment")

    fleet.stop()
    wait_for(lambda: not running.agent.connected.is_set(), description="disconnect")
    served_offline = running.infer([[0, 0, 0, 0]])
    fleet.start()
    wait_for(
        lambda: len(fleet.servicer.registrations) >= 2, timeout_s=15, description="re-registration"
    )
    wait_for(lambda: len(fleet.servicer.of_kind("hello")) >= 2, description="second hello")

    assert served_offline["variant_id"] == manifest.variant_id
    assert fleet.servicer.registrations[-1].current_variant_id == manifest.variant_id
    assert fleet.servicer.of_kind("hello")[-1].current_variant_id == manifest.variant_id


def test_daemon_restores_model_after_restart(fleet, start_agent):
    first = start_agent()
    manifest = publish_variant(fleet, 2.0, 1.0)
    wait_for(lambda: fleet.servicer.open_sessions, description="session")
    fleet.servicer.send(deploy_command("cmd-1", "dep-1", manifest))
    wait_for(lambda: ACTIVE in fleet.servicer.statuses("dep-1"), description="deployment")
    first.stop()

    second = start_agent()
    wait_for(lambda: len(fleet.servicer.registrations) >= 2, description="second registration")

    assert fleet.servicer.registrations[-1].current_variant_id == manifest.variant_id
    assert second.infer([[0, 0, 0, 0]])["variant_id"] == manifest.variant_id


def test_daemon_corrupt_model_rolls_back(fleet, start_agent):
    first = start_agent()
    old = publish_variant(fleet, 2.0, 1.0)
    new = publish_variant(fleet, 4.0, 0.0)
    wait_for(lambda: fleet.servicer.open_sessions, description="session")
    fleet.servicer.send(deploy_command("cmd-1", "dep-1", old))
    wait_for(lambda: ACTIVE in fleet.servicer.statuses("dep-1"), description="first deployment")
    fleet.servicer.send(deploy_command("cmd-2", "dep-2", new))
    wait_for(lambda: ACTIVE in fleet.servicer.statuses("dep-2"), description="second deployment")
    first.stop()
    store = AgentStore(first.agent.config.state_dir)
    store.model_path(new.sha256).write_bytes(b"corrupted on disk")

    second = start_agent()
    wait_for(
        lambda: (
            fleet.servicer.of_kind("status")[-1].state == fleet_pb2.DEPLOYMENT_STATE_ROLLED_BACK
        ),
        description="ROLLED_BACK status",
    )

    assert second.infer([[0, 0, 0, 0]])["variant_id"] == old.variant_id
    assert AgentStore(first.agent.config.state_dir).state.current == old.sha256


def test_daemon_stops_after_load_crashes(fleet, start_agent, tmp_path):
    manifest = publish_variant(fleet, 2.0, 1.0)
    store = AgentStore(tmp_path / "state")
    store.record_update(
        UpdateRecord(
            "cmd-0",
            "dep-0",
            manifest.variant_id,
            manifest.sha256,
            UpdateState.LOADING,
            attempts=MAX_ATTEMPTS,
            command_json=json_format.MessageToJson(
                fleet_pb2.DeployCommand(deployment_id="dep-0", manifest=manifest)
            ),
        )
    )

    start_agent()
    wait_for(lambda: fleet.servicer.open_sessions, description="session")
    fleet.servicer.send(deploy_command("cmd-1", "dep-0", manifest))
    wait_for(lambda: FAILED in fleet.servicer.statuses("dep-0")[1:], description="FAILED")

    statuses = [s for s in fleet.servicer.of_kind("status") if s.deployment_id == "dep-0"]
    assert "restarted while loading" in statuses[0].message
    assert f"after {MAX_ATTEMPTS} attempts" in statuses[-1].message
    assert len(fleet.servicer.download_requests) == 0


def test_daemon_applies_interval_command(fleet, start_agent):
    running = start_agent()
    wait_for(lambda: fleet.servicer.open_sessions, description="session")
    fleet.servicer.send(
        fleet_pb2.Command(
            command_id="cmd-interval",
            set_telemetry_interval=fleet_pb2.SetTelemetryIntervalCommand(interval_s=0.1),
        )
    )
    wait_for(lambda: running.agent.telemetry_interval_s == 0.1, description="interval change")


def test_daemon_writes_agent_json(fleet, start_agent):
    running = start_agent()
    wait_for(lambda: fleet.servicer.registrations, description="registration")

    info = json.loads((running.agent.config.state_dir / "agent.json").read_text())
    assert info["api_port"] == running.agent.api_port
    assert info["api_host"] == "127.0.0.1"
    running.stop()
    assert not (running.agent.config.state_dir / "agent.json").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_id", "bad id!"),
        ("controller", "no-port"),
        ("controller", "host:99999"),
        ("telemetry_interval_s", 0.0),
        ("api_port", 70000),
    ],
)
def test_agent_config_rejects_invalid(profile, tmp_path, field, value):
    settings = {
        "controller": "127.0.0.1:5000",
        "device_id": "pi-0001",
        "profile": profile,
        "state_dir": tmp_path,
    }
    with pytest.raises(InvalidInputError):
        AgentConfig(**{**settings, field: value})
