"""Backoff and attempt limit of deployments sent again after a failure."""

from __future__ import annotations

from edgefleet.controller.redeploy import DueRedeploy, RedeploySchedule


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
