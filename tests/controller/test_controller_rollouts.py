"""Rollouts driven through the controller's transport entry points (status, telemetry)."""

from __future__ import annotations

from pathlib import Path

import pytest
from controller_support import BACKENDS, store_fake_ladder, wait_for
from rollout_support import (
    ACTIVE,
    FAILED,
    ROLLED_BACK,
    report,
    report_deploying,
    send_latency,
    states,
)

from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.errors import (
    InvalidRolloutError,
    RolloutConflictError,
    RolloutStateError,
    UnknownDeviceError,
    UnknownModelError,
    UnknownRolloutError,
    UnknownVariantError,
)
from edgefleet.controller.models import DeviceState, EventKind, RolloutState, WaveState
from edgefleet.controller.policy import PolicyConfig
from edgefleet.controller.rollouts import GateConfig, Target
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile

# Every test runs on SQLite and on a real PostgreSQL server.
pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

QUICK_GATES = GateConfig(soak_s=0.0, min_samples=2)


@pytest.fixture
def controller_config() -> ControllerConfig:
    return ControllerConfig(
        host_calibration_duration_s=0.2,
        shutdown_grace_s=1.0,
        rollout_check_interval_s=0.05,
        policy=PolicyConfig(breach_samples=3, headroom_samples=5, cooldown_s=0.0),
    )


@pytest.fixture
def fleet(controller: Controller, profile: DeviceProfile) -> tuple[str, list[str], list[str]]:
    """Register a fake ladder and four devices on its second rung.

    Returns the model id, the ladder and the device ids.
    """
    model, ladder = store_fake_ladder(controller, profile)
    device_ids = [f"dev-{index}" for index in range(4)]
    for device_id in device_ids:
        controller.registry.register_device(device_id, profile, current_variant_id=ladder[1])
    return model.id, ladder, device_ids


def test_rollout_splits_devices_into_waves(controller, fleet):
    model_id, ladder, _ = fleet

    rollout = controller.rollouts.start(model_id, "all", waves="1,50%,100%", gates=QUICK_GATES)

    assert rollout.state is RolloutState.RUNNING
    assert [wave.spec for wave in rollout.waves] == ["1", "50%", "100%"]
    assert [wave.size for wave in rollout.waves] == [1, 1, 2]
    assert [wave.state for wave in rollout.waves] == [
        WaveState.DEPLOYING,
        WaveState.PENDING,
        WaveState.PENDING,
    ]
    assert states(rollout) == {
        "dev-0": "deploying",
        "dev-1": "pending",
        "dev-2": "pending",
        "dev-3": "pending",
    }
    # The fake ladder's first rung is within the profile's budget, so it is the choice.
    assert {device.variant_id for device in rollout.devices} == {ladder[0]}
    assert {device.previous_variant_id for device in rollout.devices} == {ladder[1]}
    assert controller.registry.get_device("dev-0").desired_variant_id == ladder[0]
    assert controller.registry.get_device("dev-1").desired_variant_id != ladder[0]


def test_rollout_succeeds_wave_by_wave(controller, fleet):
    model_id, ladder, device_ids = fleet
    rollout = controller.rollouts.start(model_id, "all", waves="1,50%,100%", gates=QUICK_GATES)

    for wave_size in (1, 1, 2):
        reported = report_deploying(controller, rollout.id, ACTIVE)
        assert len(reported) == wave_size

        def next_wave_or_done(previous=reported):
            current = controller.rollouts.get(rollout.id)
            deploying = [d for d in current.devices if d.state.value == "deploying"]
            return current.state is RolloutState.SUCCEEDED or (
                deploying and deploying[0].device_id not in previous
            )

        wait_for(next_wave_or_done)

    done = controller.rollouts.get(rollout.id)
    assert done.state is RolloutState.SUCCEEDED
    assert done.finished_at is not None
    assert all(wave.state is WaveState.PASSED for wave in done.waves)
    assert set(states(done).values()) == {"updated"}
    for device_id in device_ids:
        assert controller.registry.get_device(device_id).current_variant_id == ladder[0]
    kinds = [event.kind for event in controller.registry.list_events()]
    assert kinds.count(EventKind.ROLLOUT_WAVE_PASSED) == 3
    assert EventKind.ROLLOUT_SUCCEEDED in kinds


def test_failed_canary_halts_before_next_wave(controller, fleet):
    model_id, ladder, _ = fleet
    rollout = controller.rollouts.start(model_id, "all", waves="1,100%", gates=QUICK_GATES)

    report_deploying(controller, rollout.id, FAILED, message="self-test output mismatch")
    wait_for(lambda: controller.rollouts.get(rollout.id).state is RolloutState.HALTED)

    halted = controller.rollouts.get(rollout.id)
    assert "1 of 1 deployments failed" in halted.reason
    assert "self-test output mismatch" in halted.reason
    assert [wave.state for wave in halted.waves] == [WaveState.FAILED, WaveState.CANCELLED]
    assert states(halted) == {
        "dev-0": "failed",
        "dev-1": "skipped",
        "dev-2": "skipped",
        "dev-3": "skipped",
    }
    for device_id in ("dev-1", "dev-2", "dev-3"):
        assert controller.registry.get_device(device_id).desired_variant_id != ladder[0]
    halted_events = controller.registry.list_events(kinds=[EventKind.ROLLOUT_HALTED])
    assert len(halted_events) == 1
    assert halted_events[0].details["rollout_id"] == rollout.id


def test_rollback_after_activation_halts(controller, fleet):
    model_id, ladder, _ = fleet
    rollout = controller.rollouts.start(
        model_id, "all", waves="1,100%", gates=GateConfig(soak_s=60.0)
    )
    report_deploying(controller, rollout.id, ACTIVE)
    wait_for(lambda: controller.rollouts.get(rollout.id).waves[0].state is WaveState.SOAKING)
    deployment_id = controller.rollouts.get(rollout.id).device("dev-0").deployment_id

    # The agent names the variant it went back to, as a real one does.
    report(
        controller,
        "dev-0",
        deployment_id,
        ROLLED_BACK,
        "health check failed",
        previous_variant_id=ladder[1],
    )
    wait_for(lambda: controller.rollouts.get(rollout.id).state is RolloutState.HALTED)

    halted = controller.rollouts.get(rollout.id)
    assert halted.device("dev-0").state.value == "failed"
    assert "rolled back after activation: health check failed" in halted.reason
    assert controller.registry.get_device("dev-0").current_variant_id == ladder[1]


def test_latency_regression_halts_and_reverts(controller, fleet):
    model_id, ladder, device_ids = fleet
    for device_id in device_ids:
        send_latency(controller, device_id, ladder[1], 4.0, count=3)
    gates = GateConfig(soak_s=0.3, min_samples=2, max_p95_regression=0.5, max_failure_rate=0.0)
    rollout = controller.rollouts.start(model_id, "all", waves="2,100%", gates=gates)
    canary = [d.device_id for d in rollout.devices if d.wave == 0]

    report_deploying(controller, rollout.id, ACTIVE)
    wait_for(lambda: set(states(controller.rollouts.get(rollout.id)).values()) >= {"updated"})
    send_latency(controller, canary[0], ladder[0], 4.4, count=3)  # 10 % slower: fine
    send_latency(controller, canary[1], ladder[0], 9.0, count=3)  # 125 % slower
    wait_for(lambda: controller.rollouts.get(rollout.id).state is RolloutState.HALTED)

    halted = controller.rollouts.get(rollout.id)
    assert "p95 rose more than 50%" in halted.reason
    assert f"{canary[1]} p95 4.00 -> 9.00 ms" in halted.reason
    assert halted.waves[0].result["regressed"] == {
        canary[1]: {"baseline_p95_ms": 4.0, "soak_p95_ms": 9.0}
    }
    assert halted.device(canary[0]).soak_p95_ms == pytest.approx(4.4)
    # Both canary devices were updated, so both go back, the healthy one included.
    assert {states(halted)[device_id] for device_id in canary} == {"reverting"}
    for device_id in canary:
        assert controller.registry.get_device(device_id).desired_variant_id == ladder[1]

    report_deploying(controller, rollout.id, ACTIVE)
    wait_for(lambda: controller.rollouts.get(rollout.id).settled)
    reverted = controller.rollouts.get(rollout.id)
    assert {states(reverted)[device_id] for device_id in canary} == {"reverted"}
    for device_id in device_ids:
        assert controller.registry.get_device(device_id).current_variant_id == ladder[1]
    reverts = controller.registry.list_events(kinds=[EventKind.ROLLOUT_REVERT])
    assert sorted(event.device_id for event in reverts) == sorted(canary)
    assert all(event.to_variant == ladder[1] for event in reverts)


def test_device_without_enough_samples_not_judged(controller, fleet):
    model_id, _, _ = fleet
    gates = GateConfig(soak_s=0.1, min_samples=2, max_p95_regression=0.1)
    rollout = controller.rollouts.start(model_id, "devices:dev-0", waves="100%", gates=gates)

    report_deploying(controller, rollout.id, ACTIVE)
    wait_for(lambda: controller.rollouts.get(rollout.id).state is RolloutState.SUCCEEDED)

    wave = controller.rollouts.get(rollout.id).waves[0]
    assert wave.result["not_judged_on_latency"] == ["dev-0"]


def test_pause_holds_next_wave_until_resume(controller, fleet):
    model_id, _, _ = fleet
    rollout = controller.rollouts.start(model_id, "all", waves="1,100%", gates=QUICK_GATES)

    paused = controller.rollouts.pause(rollout.id, reason="maintenance window")
    assert paused.state is RolloutState.PAUSED
    report_deploying(controller, rollout.id, ACTIVE)
    wait_for(lambda: controller.rollouts.get(rollout.id).waves[0].state is WaveState.PASSED)
    controller.rollouts.step()
    still_paused = controller.rollouts.get(rollout.id)
    assert still_paused.waves[1].state is WaveState.PENDING
    assert states(still_paused)["dev-1"] == "pending"
    with pytest.raises(RolloutStateError, match="it is paused"):
        controller.rollouts.pause(rollout.id)

    resumed = controller.rollouts.resume(rollout.id)

    assert resumed.state is RolloutState.RUNNING
    assert resumed.waves[1].state is WaveState.DEPLOYING
    assert states(resumed)["dev-1"] == "deploying"
    with pytest.raises(RolloutStateError, match="only a paused rollout can be resumed"):
        controller.rollouts.resume(rollout.id)
    events = controller.registry.list_events(
        kinds=[EventKind.ROLLOUT_PAUSED, EventKind.ROLLOUT_RESUMED]
    )
    assert [event.kind for event in events] == [EventKind.ROLLOUT_PAUSED, EventKind.ROLLOUT_RESUMED]
    assert events[0].reason == "maintenance window"


def test_abort_reverts_updated_devices(controller, fleet):
    model_id, ladder, _ = fleet
    rollout = controller.rollouts.start(
        model_id, "all", waves="1,100%", gates=GateConfig(soak_s=60.0)
    )
    report_deploying(controller, rollout.id, ACTIVE)
    wait_for(lambda: controller.rollouts.get(rollout.id).waves[0].state is WaveState.SOAKING)

    aborted = controller.rollouts.abort(rollout.id, reason="wrong model")

    assert aborted.state is RolloutState.ABORTED
    assert aborted.reason == "wrong model"
    assert [wave.state for wave in aborted.waves] == [WaveState.CANCELLED, WaveState.CANCELLED]
    assert states(aborted) == {
        "dev-0": "reverting",
        "dev-1": "skipped",
        "dev-2": "skipped",
        "dev-3": "skipped",
    }
    assert controller.rollouts.rollout_of("dev-0") == rollout.id
    assert controller.rollouts.rollout_of("dev-1") is None
    with pytest.raises(RolloutStateError, match="already ended aborted"):
        controller.rollouts.abort(rollout.id)

    report_deploying(controller, rollout.id, ACTIVE)
    wait_for(lambda: controller.rollouts.get(rollout.id).settled)
    assert states(controller.rollouts.get(rollout.id))["dev-0"] == "reverted"
    assert controller.registry.get_device("dev-0").current_variant_id == ladder[1]
    assert controller.rollouts.rollout_of("dev-0") is None


def test_revert_returns_to_variant_reported_after_start(controller, fleet):
    model_id, ladder, _ = fleet
    # dev-1's first deployment has not been reported yet when the rollout starts.
    controller.registry.update_device("dev-1", current_variant_id=None)
    rollout = controller.rollouts.start(model_id, "all", waves="1,100%", gates=QUICK_GATES)
    assert rollout.device("dev-1").previous_variant_id is None
    controller.rollouts.pause(rollout.id)
    report_deploying(controller, rollout.id, ACTIVE)
    wait_for(lambda: controller.rollouts.get(rollout.id).waves[0].state is WaveState.PASSED)
    controller.registry.update_device("dev-1", current_variant_id=ladder[2])

    resumed = controller.rollouts.resume(rollout.id)
    assert resumed.device("dev-1").previous_variant_id == ladder[2]
    controller.rollouts.abort(rollout.id, reason="wrong model")
    report_deploying(controller, rollout.id, ACTIVE)
    wait_for(lambda: controller.rollouts.get(rollout.id).settled)

    assert states(controller.rollouts.get(rollout.id))["dev-1"] == "reverted"
    assert controller.registry.get_device("dev-1").current_variant_id == ladder[2]


def test_deploy_timeout_counts_as_failure(controller, fleet):
    model_id, ladder, _ = fleet
    gates = GateConfig(soak_s=0.0, deploy_timeout_s=0.2)
    rollout = controller.rollouts.start(model_id, "devices:dev-2", waves="100%", gates=gates)

    wait_for(lambda: controller.rollouts.get(rollout.id).state is RolloutState.HALTED)

    halted = controller.rollouts.get(rollout.id)
    assert "1 of 1 deployments failed" in halted.reason
    assert "no report within 0.2 s" in halted.reason
    # The device never reported, so it may still install the variant: it is sent back,
    # and that revert times out too because the device is offline.
    assert controller.registry.get_device("dev-2").desired_variant_id == ladder[1]
    wait_for(lambda: controller.rollouts.get(rollout.id).settled)
    device = controller.rollouts.get(rollout.id).device("dev-2")
    assert device.state.value == "revert_failed"
    assert "sends it again when the device reconnects" in device.reason


def test_rollout_continues_after_restart(tmp_path: Path, controller_config, profile, database_url):
    first = Controller(
        controller_config, data_dir=tmp_path / "controller", database_url=database_url
    )
    first.start()
    model, ladder = store_fake_ladder(first, profile)
    for device_id in ("dev-a", "dev-b"):
        first.registry.register_device(device_id, profile, current_variant_id=ladder[1])
    rollout = first.rollouts.start(model.id, "all", waves="1,100%", gates=QUICK_GATES)
    canary = rollout.waves[0].device_ids[0]
    first.shutdown(grace_s=0.5)

    second = Controller(
        controller_config, data_dir=tmp_path / "controller", database_url=database_url
    )
    second.start()
    try:
        assert second.rollouts.get(rollout.id).state is RolloutState.RUNNING
        assert second.rollouts.rollout_of(canary) == rollout.id
        report_deploying(second, rollout.id, ACTIVE)
        wait_for(lambda: states(second.rollouts.get(rollout.id))[canary] == "updated")
        wait_for(lambda: second.rollouts.get(rollout.id).waves[1].state is WaveState.DEPLOYING)
        report_deploying(second, rollout.id, ACTIVE)
        wait_for(lambda: second.rollouts.get(rollout.id).state is RolloutState.SUCCEEDED)
        assert [r.id for r in second.rollouts.list()] == [rollout.id]
    finally:
        second.shutdown(grace_s=0.5)


def test_explicit_variant_per_profile(controller, fleet, profile):
    model_id, ladder, _ = fleet
    rollout = controller.rollouts.start(
        model_id,
        Target.for_profile(profile.name),
        waves=["100%"],
        gates=QUICK_GATES,
        variants={profile.name: ladder[2]},
    )

    assert {device.variant_id for device in rollout.devices} == {ladder[2]}
    assert rollout.variants == {profile.name: ladder[2]}
    assert rollout.to_dict()["variants"] == {profile.name: ladder[2]}


def test_device_already_on_variant_unchanged(controller, fleet):
    model_id, ladder, _ = fleet
    controller.registry.update_device("dev-3", current_variant_id=ladder[0])

    rollout = controller.rollouts.start(model_id, "devices:dev-3", waves="100%", gates=QUICK_GATES)

    assert states(rollout) == {"dev-3": "unchanged"}
    assert rollout.device("dev-3").deployment_id is None
    wait_for(lambda: controller.rollouts.get(rollout.id).state is RolloutState.SUCCEEDED)


def test_rollout_list_and_to_dict(controller, fleet):
    model_id, _, _ = fleet
    first = controller.rollouts.start(model_id, "devices:dev-0", waves="100%")
    second = controller.rollouts.start(model_id, "devices:dev-1", waves="100%")

    listed = controller.rollouts.list()
    running = controller.rollouts.list(states=[RolloutState.RUNNING], limit=1)

    assert {rollout.id for rollout in listed} == {first.id, second.id}
    assert len(running) == 1
    data = first.to_dict()
    assert data["state"] == "running"
    assert data["target"] == {"kind": "devices", "profile": None, "device_ids": ["dev-0"]}
    assert data["waves"][0]["device_ids"] == ["dev-0"]
    assert data["devices"][0]["state"] == "deploying"
    assert data["gates"]["soak_s"] == GateConfig().soak_s


# -- bad input --------------------------------------------------------------------


def test_unknown_model_rejected(controller, fleet):
    with pytest.raises(UnknownModelError, match="no model with id 'nope'"):
        controller.rollouts.start("nope", "all")


def test_unknown_device_rejected(controller, fleet):
    model_id, _, _ = fleet
    with pytest.raises(UnknownDeviceError, match="'ghost' is not registered"):
        controller.rollouts.start(model_id, "devices:dev-0,ghost")


def test_empty_device_list_rejected(controller, fleet):
    model_id, _, _ = fleet
    with pytest.raises(InvalidRolloutError, match="lists no devices"):
        controller.rollouts.start(model_id, "devices:")


def test_unknown_profile_target_rejected(controller, fleet, profile):
    model_id, _, _ = fleet
    with pytest.raises(InvalidRolloutError, match=f"known profiles: {profile.name}"):
        controller.rollouts.start(model_id, "profile:no-such-board")


def test_target_without_devices_rejected(controller, profile):
    model, _ = store_fake_ladder(controller, profile)
    with pytest.raises(InvalidRolloutError, match="matches no registered device"):
        controller.rollouts.start(model.id, "all")


def test_no_model_registered_rejected(controller):
    with pytest.raises(InvalidRolloutError, match="no model is registered"):
        controller.rollouts.start(None, "all")


@pytest.mark.parametrize(
    ("waves", "message"),
    [
        ("1,1,100%", "waves must increase, but 1 follows 1"),
        ("50%,25%,100%", "waves must increase, but 25% follows 50%"),
        ("1,50%", "the last wave is 50%, but it must be 100%"),
        ("", "at least one wave"),
        ("0,100%", "count must be at least 1, got 0"),
        ("1,150%", "at most 100, got 150.0"),
        ("one,100%", "invalid wave 'one'"),
        ("3,25%,100%", "wave 25% reaches 1 of 4 devices, fewer than the 3 of wave 3"),
    ],
)
def test_invalid_waves_rejected(controller, fleet, waves, message):
    model_id, _, _ = fleet
    with pytest.raises(InvalidRolloutError, match=message):
        controller.rollouts.start(model_id, "all", waves=waves)
    assert controller.rollouts.list() == []


def test_invalid_gates_rejected(controller, fleet):
    model_id, _, _ = fleet
    with pytest.raises(InvalidRolloutError, match="max_failure_rate must be a number from 0"):
        controller.rollouts.start(model_id, "all", gates={"max_failure_rate": 1.5})
    with pytest.raises(InvalidRolloutError, match="unknown gate setting"):
        controller.rollouts.start(model_id, "all", gates={"soak": 5})


def test_unknown_variant_rejected(controller, fleet, profile):
    model_id, _, _ = fleet
    with pytest.raises(UnknownVariantError, match="no variant 'v-missing'"):
        controller.rollouts.start(model_id, "all", variants={profile.name: "v-missing"})


def test_variant_for_untargeted_profile_rejected(controller, fleet, profile):
    model_id, ladder, _ = fleet
    with pytest.raises(InvalidRolloutError, match=r"names profile\(s\) other-board"):
        controller.rollouts.start(model_id, "all", variants={"other-board": ladder[0]})


def test_profile_without_ladder_rejected(controller, fleet):
    model = controller.registry.register_model(
        name="unplanned", digest="e" * 64, source="u.onnx", data_path="u.npz", weights_path=None
    )
    with pytest.raises(InvalidRolloutError, match="has no ladder for profile test-board"):
        controller.rollouts.start(model.id, "all")


def test_device_in_running_rollout_conflicts(controller, fleet):
    model_id, _, _ = fleet
    first = controller.rollouts.start(model_id, "devices:dev-0,dev-1", waves="100%")
    with pytest.raises(RolloutConflictError, match=f"belongs to rollout {first.id}"):
        controller.rollouts.start(model_id, "devices:dev-1,dev-2", waves="100%")


def test_manual_deploy_to_rollout_device_rejected(controller, fleet):
    model_id, ladder, _ = fleet
    rollout = controller.rollouts.start(model_id, "devices:dev-0", waves="100%")

    with pytest.raises(RolloutConflictError, match=f"belongs to rollout {rollout.id}"):
        controller.deploy("dev-0", ladder[2], reason="manual")
    assert controller.deploy("dev-1", ladder[2], reason="manual").variant_id == ladder[2]


def test_unknown_rollout_id_rejected(controller):
    with pytest.raises(UnknownRolloutError, match="no rollout with id 'r-1'"):
        controller.rollouts.get("r-1")
    with pytest.raises(UnknownRolloutError):
        controller.rollouts.pause("r-1")


def test_canary_is_a_device_that_needs_the_update(controller, fleet, profile):
    model_id, ladder, _ = fleet
    # dev-0 already serves the target rung and is online; dev-3 needs it and is online;
    # dev-1 and dev-2 need it but are offline.
    controller.registry.register_device("dev-0", profile, current_variant_id=ladder[0])
    controller.registry.set_presence(["dev-0", "dev-3"], DeviceState.ONLINE, reason="test")

    rollout = controller.rollouts.start(model_id, "all", waves="1,2,100%", gates=QUICK_GATES)

    assert [set(wave.device_ids) for wave in rollout.waves] == [
        {"dev-3"},
        {"dev-1"},
        {"dev-0", "dev-2"},
    ]
    assert states(rollout)["dev-3"] == "deploying"
    assert rollout.offline_device_ids == ("dev-1", "dev-2")
    assert rollout.left_out_device_ids == ()


def test_online_only_leaves_offline_devices_out(controller, fleet):
    model_id, _, _ = fleet
    controller.registry.set_presence(["dev-3"], DeviceState.ONLINE, reason="test")

    rollout = controller.rollouts.start(
        model_id, "all", waves="100%", gates=QUICK_GATES, online_only=True
    )

    assert [device.device_id for device in rollout.devices] == ["dev-3"]
    assert rollout.left_out_device_ids == ("dev-0", "dev-1", "dev-2")
    assert rollout.offline_device_ids == ()
    started = controller.registry.list_events(kinds=[EventKind.ROLLOUT_STARTED])[-1]
    assert started.details["left_out_device_ids"] == ["dev-0", "dev-1", "dev-2"]
    # The snapshot read back later has no start-time lists.
    assert controller.rollouts.get(rollout.id).left_out_device_ids == ()


def test_online_only_with_every_device_offline_is_rejected(controller, fleet):
    model_id, _, _ = fleet

    with pytest.raises(InvalidRolloutError, match="every device of target 'all' is offline"):
        controller.rollouts.start(model_id, "all", online_only=True)
    assert controller.rollouts.list() == []
