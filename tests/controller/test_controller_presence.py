"""Connected devices that go silent are shown offline, and online again once heard from."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from controller_support import BACKENDS, make_sample, wait_for
from mosquitto_support import MqttProbe, wait_until

from edgefleet.controller.config import ConfigError, ControllerConfig
from edgefleet.controller.db import open_database
from edgefleet.controller.models import DeviceState, EventKind, utc_now
from edgefleet.controller.presence import PresenceWatch
from edgefleet.controller.registry import Registry
from edgefleet.controller.service import Controller
from edgefleet.controller.sessions import StreamSession
from edgefleet.protos.mqtt import BrokerSettings, DeviceTopics, TopicKind
from edgefleet.protos.v1 import fleet_pb2

TIMEOUT_S = 1.5


@pytest.fixture
def controller_config() -> ControllerConfig:
    return ControllerConfig(
        host_calibration_duration_s=0.2,
        shutdown_grace_s=1.0,
        telemetry_interval_s=0.5,
        presence_timeout_s=TIMEOUT_S,
    )


def connect(controller: Controller, profile, device_id: str) -> StreamSession:
    controller.registry.register_device(device_id, profile)
    session = StreamSession(device_id)
    controller.open_session(session)
    return session


def state(controller: Controller, device_id: str) -> DeviceState:
    return controller.registry.get_device(device_id).state


def presence_events(controller: Controller, device_id: str) -> list[tuple[EventKind, str]]:
    events = controller.registry.list_events(
        device_id=device_id, kinds=[EventKind.CONNECTED, EventKind.DISCONNECTED]
    )
    return [(event.kind, event.reason) for event in events]


def test_watch_marks_quiet_then_back() -> None:
    watch = PresenceWatch(10.0)
    watch.connected("a", 100.0)
    watch.connected("b", 100.0)
    watch.heard("b", 108.0)

    first = watch.check(["a", "b"], now=111.0)
    assert first.quiet == ["a"]
    assert first.back == []
    assert watch.is_quiet("a")
    assert watch.check(["a", "b"], now=112.0).quiet == [], "a quiet device is reported once"
    assert watch.unheard(["a", "b"], now=112.0) == ["a"]

    watch.heard("a", 99.0)  # older than the last message: no change
    assert watch.check(["a", "b"], now=113.0).back == []
    watch.heard("a", 113.0)
    second = watch.check(["a", "b"], now=114.0)
    assert second.back == ["a"]
    assert second.quiet == []
    assert not watch.is_quiet("a")
    assert watch.check(["a", "b"], now=119.0).quiet == ["b"]


def test_watch_forgets_devices_that_disconnect() -> None:
    watch = PresenceWatch(5.0)
    watch.connected("a", 0.0)
    assert watch.check(["a"], now=6.0).quiet == ["a"]
    watch.disconnected("a")
    assert not watch.is_quiet("a")
    # Samples of a device without a session are dropped from the watch at the next check.
    watch.heard("ghost", 6.0)
    assert watch.check(["a"], now=7.0).quiet == []
    assert watch.unheard(["ghost"], now=100.0) == []


def test_watch_rejects_a_timeout_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="timeout_s must be positive, got 0"):
        PresenceWatch(0)


def test_silent_device_goes_offline_then_online_when_heard(controller, profile) -> None:
    session = connect(controller, profile, "dev-1")
    assert state(controller, "dev-1") is DeviceState.ONLINE

    wait_for(lambda: state(controller, "dev-1") is DeviceState.OFFLINE, timeout_s=10)
    assert presence_events(controller, "dev-1")[-1] == (
        EventKind.DISCONNECTED,
        f"nothing heard for {TIMEOUT_S:g} s (presence_timeout_s)",
    )
    assert controller.sessions.get("dev-1") is session, "the session stays open"

    controller.submit_telemetry("dev-1", make_sample("dev-1"))
    wait_for(lambda: state(controller, "dev-1") is DeviceState.ONLINE, timeout_s=10)
    assert presence_events(controller, "dev-1")[-1] == (EventKind.CONNECTED, "heard from again")


def test_device_sending_telemetry_stays_online(controller, profile) -> None:
    connect(controller, profile, "dev-1")
    for seq in range(1, 9):
        controller.submit_telemetry("dev-1", make_sample("dev-1", seq=seq))
        controller.check_presence()
        assert state(controller, "dev-1") is DeviceState.ONLINE
        time.sleep(0.4)


def test_sample_stored_by_another_process_keeps_device_online(controller, profile) -> None:
    connect(controller, profile, "dev-1")
    # Telemetry split over a shared subscription reaches this process only through the
    # database's last_seen, which another controller process updates.
    time.sleep(TIMEOUT_S + 0.3)
    controller.registry.update_device("dev-1", last_seen=utc_now())

    assert controller.check_presence().quiet == []
    assert state(controller, "dev-1") is DeviceState.ONLINE


def test_reconnect_races_with_quiet_check(controller, profile) -> None:
    connect(controller, profile, "dev-1")
    time.sleep(TIMEOUT_S + 0.3)
    # The device opens a new session after the watch found it quiet, before the check
    # stores that: its fresh last_seen keeps it online.
    controller.registry.update_device("dev-1", last_seen=utc_now() + timedelta(seconds=1))
    assert controller.check_presence().quiet == []
    assert state(controller, "dev-1") is DeviceState.ONLINE


def test_ended_session_is_not_shown_online_again(controller, profile) -> None:
    session = connect(controller, profile, "dev-1")
    wait_for(lambda: state(controller, "dev-1") is DeviceState.OFFLINE, timeout_s=10)
    controller.close_session(session)
    controller.submit_telemetry("dev-1", make_sample("dev-1"))

    assert controller.check_presence().back == []
    assert state(controller, "dev-1") is DeviceState.OFFLINE


def test_quiet_device_that_disconnects_gets_one_event(controller, profile) -> None:
    session = connect(controller, profile, "dev-1")
    wait_for(lambda: state(controller, "dev-1") is DeviceState.OFFLINE, timeout_s=10)

    controller.close_session(session)

    kinds = [kind for kind, _reason in presence_events(controller, "dev-1")]
    assert kinds == [EventKind.CONNECTED, EventKind.DISCONNECTED]


def test_zero_timeout_turns_the_check_off(tmp_path: Path, profile) -> None:
    config = ControllerConfig(host_calibration_duration_s=0.2, presence_timeout_s=0)
    controller = Controller(config, data_dir=tmp_path / "controller")
    controller.start()
    try:
        connect(controller, profile, "dev-1")
        assert controller.check_presence().quiet == []
        assert state(controller, "dev-1") is DeviceState.ONLINE
    finally:
        controller.shutdown(grace_s=0.5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"presence_timeout_s": -1.0}, r"presence_timeout_s must be a number from 0 .* got -1.0"),
        ({"presence_timeout_s": float("nan")}, r"presence_timeout_s must be a number from 0"),
        ({"presence_timeout_s": 1e12}, r"off\) to 604800, got 1000000000000.0"),
        (
            {"presence_timeout_s": 20.0, "telemetry_interval_s": 10.0},
            r"presence_timeout_s \(20.0\) must cover three telemetry intervals \(30 s with "
            r"telemetry_interval_s = 10.0\); raise it, or set 0",
        ),
    ],
)
def test_invalid_presence_timeout_rejected(fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ControllerConfig(**fields)


def test_broker_restart_without_will_shows_device_offline(controller, broker, profile) -> None:
    """A restarted broker sends no will: the silence check is what shows the device offline."""
    controller.serve_mqtt(BrokerSettings.from_options(broker.url))
    controller.registry.register_device("dev-1", profile)
    probe = MqttProbe(broker, "dev-1")
    topics = DeviceTopics("dev-1")
    online = fleet_pb2.Presence(device_id="dev-1", state=fleet_pb2.PRESENCE_STATE_ONLINE)
    probe.publish(topics.topic(TopicKind.PRESENCE), online.SerializeToString())
    wait_until(lambda: controller.sessions.is_connected("dev-1"), what="the session to open")
    try:
        broker.restart()
        wait_for(lambda: state(controller, "dev-1") is DeviceState.OFFLINE, timeout_s=15)
        kinds = [kind for kind, _reason in presence_events(controller, "dev-1")]
        assert kinds == [EventKind.CONNECTED, EventKind.DISCONNECTED]

        # The device reconnects on its own and sends a sample: it is online again.
        wait_until(lambda: probe.client.is_connected(), timeout_s=15, what="probe reconnect")
        probe.publish(topics.topic(TopicKind.TELEMETRY), make_sample("dev-1").SerializeToString())
        wait_for(lambda: state(controller, "dev-1") is DeviceState.ONLINE, timeout_s=15)
    finally:
        probe.close()


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_replica_start_and_stop_keep_other_devices_online(
    tmp_path: Path, controller_config: ControllerConfig, profile, database_url
) -> None:
    url = database_url or f"sqlite:///{tmp_path / 'shared.db'}"
    first = Controller(controller_config, data_dir=tmp_path / "first", database_url=url)
    first.start()
    try:
        connect(first, profile, "dev-1")
        second = Controller(controller_config, data_dir=tmp_path / "second", database_url=url)
        second.start()
        assert state(first, "dev-1") is DeviceState.ONLINE, "a replica's start"
        connect(second, profile, "dev-2")
        second.shutdown(grace_s=0.5)

        assert state(first, "dev-1") is DeviceState.ONLINE, "a replica's shutdown"
        assert state(first, "dev-2") is DeviceState.OFFLINE
    finally:
        first.shutdown(grace_s=0.5)
    assert state_in(url, "dev-1") is DeviceState.OFFLINE


def test_device_of_a_dead_process_goes_offline(
    tmp_path: Path, controller_config: ControllerConfig, profile
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = Controller(controller_config, data_dir=tmp_path / "first", database_url=url)
    first.start()
    try:
        # Shown online with no session in this process, as after a controller crash.
        first.registry.register_device("dev-9", profile)
        first.registry.update_device("dev-9", state=DeviceState.ONLINE, last_seen=utc_now())

        wait_for(lambda: state(first, "dev-9") is DeviceState.OFFLINE, timeout_s=10)
        assert presence_events(first, "dev-9")[-1] == (
            EventKind.DISCONNECTED,
            f"no controller process heard from it for {TIMEOUT_S:g} s",
        )
    finally:
        first.shutdown(grace_s=0.5)


def state_in(url: str, device_id: str) -> DeviceState:
    database = open_database(url, migrate=False)
    try:
        return Registry(database).get_device(device_id).state
    finally:
        database.close()
