"""Staged rollouts on a real fleet: a controller on loopback and agent processes over gRPC."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fleet_support import FleetModel, wait_for
from rollout_fleet_support import RequestLoad, retrained_copy, rollout_config, store_broken_variant

from edgefleet.controller.models import EventKind, RolloutState, WaveState
from edgefleet.controller.rollouts import GateConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrained_model(fleet_model: FleetModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("retrained-model")
    return retrained_copy(fleet_model.onnx_path, folder / "digits_mlp_v2.onnx")


def serving_variant(agent) -> str | None:
    health = agent.health()
    return health.get("variant_id") if health else None


def wait_serving(controller, agents, *, timeout_s: float = 120) -> dict[str, str]:
    """Wait until every agent serves a model and the controller has its report.

    Returns each one's variant.
    """
    for agent in agents:
        wait_for(
            lambda a=agent: (
                (serving := serving_variant(a))
                and controller.registry.get_device(a.device_id).current_variant_id == serving
            ),
            timeout_s=timeout_s,
            what=f"{agent.device_id} to serve a variant the controller knows of",
        )
    return {agent.device_id: serving_variant(agent) for agent in agents}


def wait_rollout(controller, rollout_id: str, *states: RolloutState, timeout_s: float = 120):
    return wait_for(
        lambda: (r := controller.rollouts.get(rollout_id)).state in states and r.settled and r,
        timeout_s=timeout_s,
        what=f"rollout {rollout_id} to end {' or '.join(s.value for s in states)}",
    )


def other_rung(controller, device_id: str, serving: str) -> str:
    return next(row.variant_id for row in controller.ladder(device_id) if row.variant_id != serving)


def test_new_model_reaches_fleet_in_waves(
    fleet_model, retrained_model, start_controller, start_agent
):
    fleet = start_controller(rollout_config())
    controller = fleet.controller
    controller.register_model(str(fleet_model.onnx_path), data_path=fleet_model.data_path)
    agents = [start_agent(f"wave-{i}", fleet.port, profile_name="rollout-board") for i in range(3)]
    before = wait_serving(controller, agents)

    new_model = controller.register_model(str(retrained_model), data_path=fleet_model.data_path)
    fingerprint = controller.registry.get_device("wave-0").profile_fingerprint
    wait_for(
        lambda: controller.registry.ladder(new_model.id, fingerprint),
        timeout_s=120,
        what="the new model's ladder",
    )
    assert controller.wait_until_idle(60)
    # Registering a model plans it, but devices on the old model move only in a rollout.
    assert {a.device_id: serving_variant(a) for a in agents} == before

    gates = GateConfig(
        soak_s=2.0,
        min_samples=2,
        # Sub-millisecond p95 values swing with load on a shared 2-core host, so this
        # test checks that latency is measured, and the controller tests check the gate.
        max_p95_regression=50.0,
    )
    with RequestLoad(agents, fleet_model.dataset.x_val[:50]) as load:
        time.sleep(2.0)  # samples on the old variant: each device's baseline
        rollout = controller.rollouts.start(new_model.id, "all", waves="1,2,100%", gates=gates)
        assert rollout.waves[0].device_ids == ("wave-0",)
        done = wait_rollout(controller, rollout.id, RolloutState.SUCCEEDED)
    assert load.served > 0

    assert [wave.state for wave in done.waves] == [WaveState.PASSED] * 3
    for earlier, later in zip(done.waves, done.waves[1:], strict=False):
        assert earlier.finished_at <= later.started_at
    ladder = {row.variant_id for row in controller.registry.ladder(new_model.id, fingerprint)}
    for agent in agents:
        device = done.device(agent.device_id)
        assert device.state.value == "updated"
        assert device.variant_id in ladder
        assert device.previous_variant_id == before[agent.device_id]
        assert serving_variant(agent) == device.variant_id
        assert device.baseline_p95_ms is not None, "the baseline came from served requests"
        assert device.soak_p95_ms is not None, "the soak came from served requests"
    assert controller.registry.list_events(kinds=[EventKind.ROLLOUT_SUCCEEDED])


def test_broken_variant_halts_canary_and_reverts(fleet_model, start_controller, start_agent):
    fleet = start_controller(rollout_config())
    controller = fleet.controller
    model = controller.register_model(str(fleet_model.onnx_path), data_path=fleet_model.data_path)
    agents = [
        start_agent(device_id, fleet.port, profile_name=profile)
        for device_id, profile in (
            ("canary-a", "board-a"),
            ("canary-b", "board-b"),
            ("later-a", "board-a"),
            ("later-b", "board-b"),
        )
    ]
    before = wait_serving(controller, agents)
    good = other_rung(controller, "canary-a", before["canary-a"])
    fingerprint_b = controller.registry.get_device("canary-b").profile_fingerprint
    broken = store_broken_variant(controller, model.id, fingerprint_b, before["canary-b"])

    rollout = controller.rollouts.start(
        model.id,
        "all",
        waves="2,100%",
        gates=GateConfig(soak_s=1.0),
        variants={"board-a": good, "board-b": broken},
    )
    assert rollout.waves[0].device_ids == ("canary-a", "canary-b")
    halted = wait_rollout(controller, rollout.id, RolloutState.HALTED)

    assert "self-test output differs" in halted.reason
    assert [wave.state for wave in halted.waves] == [WaveState.FAILED, WaveState.CANCELLED]
    assert halted.device("canary-b").state.value == "failed"
    # canary-a took the good variant, or was taking it, so the halt sent it back.
    assert halted.device("canary-a").state.value == "reverted"
    assert halted.device("later-a").state.value == "skipped"
    assert halted.device("later-b").state.value == "skipped"
    for agent in agents:
        assert serving_variant(agent) == before[agent.device_id]
        device = controller.registry.get_device(agent.device_id)
        assert device.current_variant_id == before[agent.device_id]
    assert not controller.registry.list_deployments("later-a")[1:], "later waves never deploy"
    reverts = controller.registry.list_events(kinds=[EventKind.ROLLOUT_REVERT])
    assert [(event.device_id, event.to_variant) for event in reverts] == [
        ("canary-a", before["canary-a"])
    ]
    assert "self-test" in reverts[0].reason


def test_pause_resume_then_abort_reverts(fleet_model, start_controller, start_agent):
    fleet = start_controller(rollout_config())
    controller = fleet.controller
    model = controller.register_model(str(fleet_model.onnx_path), data_path=fleet_model.data_path)
    agents = [start_agent(f"ops-{i}", fleet.port, profile_name="ops-board") for i in range(3)]
    before = wait_serving(controller, agents)
    target = other_rung(controller, "ops-0", before["ops-0"])

    rollout = controller.rollouts.start(
        model.id,
        "all",
        waves="1,100%",
        gates=GateConfig(soak_s=4.0),
        variants={"ops-board": target},
    )
    controller.rollouts.pause(rollout.id)
    wait_for(
        lambda: controller.rollouts.get(rollout.id).waves[0].state is WaveState.PASSED,
        timeout_s=60,
        what="the canary wave to pass while paused",
    )
    time.sleep(1.0)  # several engine steps
    paused = controller.rollouts.get(rollout.id)
    assert paused.state is RolloutState.PAUSED
    assert paused.waves[1].state is WaveState.PENDING
    assert serving_variant(agents[0]) == target
    assert serving_variant(agents[1]) == before["ops-1"]
    assert serving_variant(agents[2]) == before["ops-2"]

    controller.rollouts.resume(rollout.id)
    wait_for(
        lambda: controller.rollouts.get(rollout.id).waves[1].state is WaveState.SOAKING,
        timeout_s=60,
        what="the second wave to soak",
    )
    assert {serving_variant(agent) for agent in agents} == {target}
    aborted = controller.rollouts.abort(rollout.id, reason="operator changed plans")
    assert aborted.state is RolloutState.ABORTED

    done = wait_rollout(controller, rollout.id, RolloutState.ABORTED)
    assert {device.state.value for device in done.devices} == {"reverted"}
    for agent in agents:
        assert serving_variant(agent) == before[agent.device_id]
    aborted_events = controller.registry.list_events(kinds=[EventKind.ROLLOUT_ABORTED])
    assert "operator changed plans" in aborted_events[0].reason


def test_restarted_controller_finishes_rollout(fleet_model, start_controller, start_agent):
    fleet = start_controller(rollout_config())
    controller = fleet.controller
    model = controller.register_model(str(fleet_model.onnx_path), data_path=fleet_model.data_path)
    agents = [
        start_agent(f"restart-{i}", fleet.port, profile_name="restart-board") for i in range(2)
    ]
    before = wait_serving(controller, agents)
    target = other_rung(controller, "restart-0", before["restart-0"])
    rollout = controller.rollouts.start(
        model.id,
        "all",
        waves="1,100%",
        gates=GateConfig(soak_s=1.0),
        variants={"restart-board": target},
    )

    # Stop the controller while the canary's deployment is in flight, and start a new
    # process on the same database file and port.
    assert controller.rollouts.get(rollout.id).waves[0].state is WaveState.DEPLOYING
    fleet.stop()
    controller = fleet.start()

    assert controller.rollouts.get(rollout.id).state is RolloutState.RUNNING
    done = wait_rollout(controller, rollout.id, RolloutState.SUCCEEDED)
    assert [wave.state for wave in done.waves] == [WaveState.PASSED, WaveState.PASSED]
    for agent in agents:
        assert serving_variant(agent) == target
        assert done.device(agent.device_id).state.value == "updated"
