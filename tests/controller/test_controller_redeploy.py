"""Deployments sent again after a failure: the backoff schedule, then the controller
sending them, giving up, and leaving alone rolled-back and pinned devices and deployments
that failed while the device loaded the model."""

from __future__ import annotations

import time

import pytest
from controller_support import store_fake_ladder, wait_for
from rollout_support import FAILED, ROLLED_BACK, report

from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.models import DeploymentRow, EventKind
from edgefleet.controller.redeploy import DueRedeploy, RedeploySchedule
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.v1 import fleet_pb2

LOADING = fleet_pb2.DEPLOYMENT_STATE_LOADING
VERIFYING = fleet_pb2.DEPLOYMENT_STATE_VERIFYING


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_schedule(clock: FakeClock, *, max_attempts: int = 5) -> RedeploySchedule:
    return RedeploySchedule(initial_s=30.0, max_s=100.0, max_attempts=max_attempts, clock=clock)


def test_redeploy_delay_doubles_up_to_cap() -> None:
    schedule = make_schedule(FakeClock(), max_attempts=10)

    delays = [schedule.record_failure("dev-1", "v1") for _ in range(5)]

    assert delays == [30.0, 60.0, 100.0, 100.0, 100.0]


def test_redeploy_due_only_after_delay() -> None:
    clock = FakeClock()
    schedule = make_schedule(clock)
    schedule.record_failure("dev-1", "v1")

    clock.now += 29.0
    assert schedule.take_due() == []
    clock.now += 1.0
    assert schedule.take_due() == [DueRedeploy("dev-1", "v1", attempt=2)]
    assert schedule.take_due() == []


def test_redeploy_stops_at_attempt_limit() -> None:
    clock = FakeClock()
    schedule = make_schedule(clock, max_attempts=3)

    assert schedule.record_failure("dev-1", "v1") is not None
    assert schedule.record_failure("dev-1", "v1") is not None
    assert schedule.record_failure("dev-1", "v1") is None
    clock.now += 1000.0
    assert schedule.take_due() == []


def test_redeploy_count_restarts_for_other_variant() -> None:
    schedule = make_schedule(FakeClock(), max_attempts=2)
    schedule.record_failure("dev-1", "v1")

    assert schedule.record_failure("dev-1", "v2") == 30.0


def test_redeploy_success_forgets_failures() -> None:
    clock = FakeClock()
    schedule = make_schedule(clock, max_attempts=2)
    schedule.record_failure("dev-1", "v1")
    schedule.record_success("dev-1")

    clock.now += 1000.0
    assert schedule.take_due() == []
    assert schedule.record_failure("dev-1", "v1") == 30.0


# -- the controller sending failed deployments again ------------------------------------


@pytest.fixture
def controller_config() -> ControllerConfig:
    return ControllerConfig(
        host_calibration_duration_s=0.2,
        shutdown_grace_s=1.0,
        redeploy_initial_s=0.2,
        redeploy_max_s=0.4,
        redeploy_max_attempts=3,
    )


@pytest.fixture
def deployed(controller: Controller, profile: DeviceProfile) -> DeploymentRow:
    """Register dev-1 and deploy the top rung of a fake ladder to it."""
    controller.register_device("dev-1", profile)
    _model, ladder = store_fake_ladder(controller, profile)
    return controller.deploy("dev-1", ladder[0], reason="first deployment")


def latest(controller: Controller) -> DeploymentRow:
    deployment = controller.registry.latest_deployment("dev-1")
    assert deployment is not None
    return deployment


def test_failed_deployment_sent_again(controller, deployed) -> None:
    report(controller, "dev-1", deployed.id, FAILED, "cannot install model: read-only")

    wait_for(lambda: latest(controller).id != deployed.id)

    retry = latest(controller)
    assert retry.variant_id == deployed.variant_id
    assert retry.reason.startswith(f"attempt 2 of 3: deployment {deployed.id} failed")
    assert "read-only" in retry.reason


def test_redeploy_gives_up_at_attempt_limit(controller, deployed) -> None:
    failed = [deployed.id]
    report(controller, "dev-1", deployed.id, FAILED, "disk full")
    for _ in range(2):
        wait_for(lambda: latest(controller).id not in failed)
        failed.append(latest(controller).id)
        report(controller, "dev-1", failed[-1], FAILED, "disk full")

    time.sleep(1.0)
    assert latest(controller).id == failed[-1]
    alerts = controller.registry.list_events(device_id="dev-1", kinds=[EventKind.ALERT])
    assert any("failed 3 deployments in a row" in event.reason for event in alerts)


def test_deployment_failed_while_loading_not_sent_again(controller, deployed) -> None:
    report(controller, "dev-1", deployed.id, LOADING)
    report(controller, "dev-1", deployed.id, FAILED, "self-test output differs")

    time.sleep(1.0)
    assert latest(controller).id == deployed.id
    alerts = controller.registry.list_events(device_id="dev-1", kinds=[EventKind.ALERT])
    assert len(alerts) == 1
    assert alerts[0].details == {"deployment_id": deployed.id, "failed_in": "loading"}
    assert "self-test output differs" in alerts[0].reason


def test_deployment_failed_while_verifying_sent_again(controller, deployed) -> None:
    report(controller, "dev-1", deployed.id, VERIFYING)
    report(controller, "dev-1", deployed.id, FAILED, "sha256 mismatch after 3 downloads")

    wait_for(lambda: latest(controller).id != deployed.id)
    assert latest(controller).reason.startswith(f"attempt 2 of 3: deployment {deployed.id}")


def test_rolled_back_deployment_not_sent_again(controller, deployed) -> None:
    report(controller, "dev-1", deployed.id, ROLLED_BACK, "health check failed")

    time.sleep(1.0)
    assert latest(controller).id == deployed.id


def test_pinned_device_not_sent_again(controller, deployed) -> None:
    controller.set_pinned("dev-1", True)
    report(controller, "dev-1", deployed.id, FAILED, "disk full")

    time.sleep(1.0)
    assert latest(controller).id == deployed.id
