"""The session registry: one open session per device, and bursts of takeovers."""

from __future__ import annotations

from edgefleet.controller.sessions import TAKEOVER_ALERT_COUNT, SessionRegistry, StreamSession


def test_new_session_closes_previous() -> None:
    sessions = SessionRegistry()
    first = sessions.open(StreamSession("dev-1"))
    second = sessions.open(StreamSession("dev-1"))

    assert first.closed
    assert not second.closed
    assert sessions.get("dev-1") is second
    assert not sessions.remove(first), "a replaced session is not removed again"


def test_takeover_burst_reported_once() -> None:
    sessions = SessionRegistry()
    sessions.open(StreamSession("dev-1"))
    for _ in range(TAKEOVER_ALERT_COUNT - 1):
        sessions.open(StreamSession("dev-1"))
    assert sessions.takeover_burst("dev-1") == 0

    sessions.open(StreamSession("dev-1"))
    assert sessions.takeover_burst("dev-1") == TAKEOVER_ALERT_COUNT
    sessions.open(StreamSession("dev-1"))
    assert sessions.takeover_burst("dev-1") == 0, "one report per window"


def test_reconnects_of_other_devices_not_counted() -> None:
    sessions = SessionRegistry()
    for index in range(TAKEOVER_ALERT_COUNT + 1):
        sessions.open(StreamSession(f"dev-{index}"))

    assert all(sessions.takeover_burst(f"dev-{i}") == 0 for i in range(TAKEOVER_ALERT_COUNT + 1))
