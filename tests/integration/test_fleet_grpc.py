"""A real controller on loopback with real agent processes: the whole loop over gRPC."""

from __future__ import annotations

import numpy as np
import pytest
from fleet_support import AgentProcess, fleet_config, wait_for, write_profile

from edgefleet.controller.models import DeploymentState, EventKind

pytestmark = pytest.mark.slow

ARTIFACT_LIMIT = 4 * 1024 * 1024


def serving_variant(agent) -> str | None:
    health = agent.health()
    return health.get("variant_id") if health else None


def test_agents_register_deploy_serve_and_report(fleet_model, start_controller, start_agent):
    fleet = start_controller()
    controller = fleet.controller
    controller.register_model(str(fleet_model.onnx_path), data_path=fleet_model.data_path)
    agents = [start_agent(f"pi-{index}", fleet.port) for index in range(2)]

    for agent in agents:
        wait_for(lambda agent=agent: serving_variant(agent), timeout_s=120, what=agent.device_id)

    for agent in agents:
        device = controller.registry.get_device(agent.device_id)
        ladder = controller.ladder(agent.device_id)
        served = next(row for row in ladder if row.variant_id == device.current_variant_id)
        assert device.calibration is not None
        assert served.size_bytes > ARTIFACT_LIMIT, "the deployed fp32 variant must exceed 4 MiB"
        assert (
            controller.registry.latest_deployment(agent.device_id).state is DeploymentState.ACTIVE
        )

        x_val, y_val = fleet_model.dataset.x_val, fleet_model.dataset.y_val
        answers = [agent.infer(x_val[index]) for index in range(20)]
        predicted = [int(np.argmax(next(iter(a["outputs"].values())))) for a in answers]
        assert np.mean(np.array(predicted) == y_val[:20]) >= 0.8
        assert {answer["variant_id"] for answer in answers} == {device.current_variant_id}

    def telemetry_with_requests(device_id: str) -> bool:
        samples = controller.registry.recent_telemetry(device_id, limit=20)
        return any(sample.requests > 0 and sample.latency_p95_ms > 0 for sample in samples)

    for agent in agents:
        wait_for(
            lambda a=agent: telemetry_with_requests(a.device_id),
            timeout_s=10,
            what=f"telemetry with served requests from {agent.device_id}",
        )
        sample = controller.registry.recent_telemetry(agent.device_id, limit=1)[0]
        assert sample.memory_total_mb > 0
        assert sample.agent_rss_mb > 0

    kinds = {event.kind for event in controller.registry.list_events()}
    assert {EventKind.REGISTERED, EventKind.PLANNED, EventKind.DEPLOYED} <= kinds


def test_memory_pressure_steps_device_down(fleet_model, start_controller, start_agent):
    # A margin larger than any machine's memory turns every sample into memory pressure.
    fleet = start_controller(fleet_config(memory_margin_mb=10_000_000.0))
    controller = fleet.controller
    controller.register_model(str(fleet_model.onnx_path), data_path=fleet_model.data_path)
    agent = start_agent("pi-pressure", fleet.port)

    def stepped_down():
        events = controller.registry.list_events(
            device_id=agent.device_id, kinds=[EventKind.STEPPED_DOWN]
        )
        return events[0] if events else None

    event = wait_for(stepped_down, timeout_s=120, what="a stepped_down event")
    assert "memory" in event.reason
    assert event.details, "the event must carry the telemetry that caused it"
    wait_for(
        lambda: serving_variant(agent) == event.to_variant,
        timeout_s=60,
        what="the agent serving the variant it was stepped down to",
    )
    ladder = [row.variant_id for row in controller.ladder(agent.device_id)]
    assert ladder.index(event.to_variant) == ladder.index(event.from_variant) + 1


def test_agent_keeps_model_through_controller_restart(fleet_model, start_controller, start_agent):
    fleet = start_controller()
    fleet.controller.register_model(str(fleet_model.onnx_path), data_path=fleet_model.data_path)
    agent = start_agent("pi-restart", fleet.port)
    variant = wait_for(lambda: serving_variant(agent), timeout_s=120, what="first deployment")
    deployments_before = len(fleet.controller.registry.list_deployments(agent.device_id))

    fleet.stop()
    image = fleet_model.dataset.x_val[0]
    for _ in range(5):
        assert agent.infer(image)["variant_id"] == variant, "the agent must serve while offline"

    controller = fleet.start()

    def reconnected() -> bool:
        device = controller.registry.get_device(agent.device_id)
        return device.state.value == "online"

    wait_for(reconnected, timeout_s=60, what="the agent reconnecting to the new controller")
    assert serving_variant(agent) == variant
    assert controller.registry.get_device(agent.device_id).current_variant_id == variant
    assert len(controller.registry.list_deployments(agent.device_id)) == deployments_before
    assert agent.process.poll() is None


def test_corrupt_artifact_rejected_old_model_serves(fleet_model, start_controller, start_agent):
    fleet = start_controller()
    controller = fleet.controller
    controller.register_model(str(fleet_model.onnx_path), data_path=fleet_model.data_path)
    agent = start_agent("pi-tamper", fleet.port)
    serving = wait_for(lambda: serving_variant(agent), timeout_s=120, what="first deployment")

    ladder = controller.ladder(agent.device_id)
    target = next(row for row in ladder if row.variant_id != serving)
    stored = controller.artifacts.path(target.sha256)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit: same size, different digest
    stored.chmod(0o644)
    stored.write_bytes(bytes(data))

    deployment = controller.deploy(agent.device_id, target.variant_id, reason="tamper test")

    def failed():
        row = controller.registry.find_deployment(deployment.id)
        return row if row.state is DeploymentState.FAILED else None

    row = wait_for(failed, timeout_s=60, what="the agent rejecting the corrupt artifact")
    assert "sha256" in row.reason
    assert serving_variant(agent) == serving
    assert agent.infer(fleet_model.dataset.x_val[0])["variant_id"] == serving


def test_duplicate_device_id_alert(start_controller, tmp_path):
    fleet = start_controller()
    controller = fleet.controller
    profile = write_profile(tmp_path / "twin.toml", "twin-board")
    # Two state directories, as from a copied SD card image, under one device id.
    agents = [
        AgentProcess("twin", profile, tmp_path / f"copy-{index}" / "twin", fleet.port)
        for index in range(2)
    ]

    def duplicate_alert():
        events = controller.registry.list_events(device_id="twin", kinds=[EventKind.ALERT])
        return next((e for e in events if e.details.get("cause") == "duplicate_device_id"), None)

    try:
        alert = wait_for(duplicate_alert, timeout_s=60, what="the duplicate device id alert")
        assert "two agents probably run with this device id" in alert.reason
        assert alert.details["takeovers"] == 5
    finally:
        for agent in agents:
            agent.stop()
