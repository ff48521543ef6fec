"""A real controller, real agent processes and a real Mosquitto: the whole loop over MQTT."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fleet_support import AgentProcess, fleet_config, wait_for, write_profile
from ladder_support import LARGE_FEATURES, linear_variant, store_ladder
from mosquitto_support import MqttProbe

import edgefleet.controller.mqtt_endpoint as mqtt_endpoint
from edgefleet.agent.errors import RegistrationRejected
from edgefleet.agent.mqtt import MqttConnection
from edgefleet.controller.models import DeploymentState, DeviceState, EventKind
from edgefleet.controller.service import Controller
from edgefleet.profiles import load_profile
from edgefleet.protos.mqtt import BrokerAddress, BrokerSettings, DeviceTopics, TopicKind
from edgefleet.protos.v1 import fleet_pb2

ACL_FILE = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "acl"
# 1100 x 1100 float32 weights make the ONNX file about 4.8 MB, over 4 MiB.
ARTIFACT_LIMIT = 4 * 1024 * 1024
KEEPALIVE_S = 2
# Mosquitto 2.0 runs its keepalive check at most once every 5 s (src/keepalive.c), on a
# clock in whole seconds, so a frozen client's will can come about 7 s after 1.5 x keepalive.
MOSQUITTO_KEEPALIVE_CHECK_S = 7


def store_large_ladder(controller: Controller, profile_path: Path) -> str:
    """Store a one-rung ladder with a real 4.8 MB variant for the profile; returns its id."""
    data, manifest = linear_variant(LARGE_FEATURES, scale=2.0)
    return store_ladder(controller, load_profile(profile_path), data, manifest).variant_id


@pytest.fixture
def mqtt_fleet(broker, start_controller, tmp_path):
    fleet = start_controller(fleet_config())
    fleet.controller.serve_mqtt(BrokerSettings.from_options(broker.url))
    profile = write_profile(tmp_path / "shared.toml", "mqtt-board")
    return fleet.controller, profile


def serving_variant(agent) -> str | None:
    health = agent.health()
    return health.get("variant_id") if health else None


def device_state(controller: Controller, device_id: str) -> DeviceState | None:
    device = controller.registry.find_device(device_id)
    return device.state if device is not None else None


def test_mqtt_agent_deploys_reports_and_dies(mqtt_fleet, broker, start_agent):
    controller, profile = mqtt_fleet
    variant_id = store_large_ladder(controller, profile)
    agent = start_agent("pi-mqtt", broker=broker.url, keepalive_s=KEEPALIVE_S,
                        profile_name="mqtt-board")  # fmt: skip

    wait_for(lambda: serving_variant(agent) == variant_id, timeout_s=90, what="the deployment")
    assert controller.registry.get_device("pi-mqtt").calibration is not None
    assert controller.ladder("pi-mqtt")[0].size_bytes > ARTIFACT_LIMIT
    # The agent serves the variant before its ACTIVE status reaches the controller.
    wait_for(
        lambda: controller.registry.latest_deployment("pi-mqtt").state is DeploymentState.ACTIVE,
        timeout_s=15,
        what="the ACTIVE status",
    )
    deployment = controller.registry.latest_deployment("pi-mqtt")
    wait_for(
        lambda: controller.registry.count_telemetry("pi-mqtt") >= 3, timeout_s=15, what="telemetry"
    )
    assert device_state(controller, "pi-mqtt") is DeviceState.ONLINE

    # The broker redelivers a QoS 1 command the agent may already have applied.
    probe = MqttProbe(broker, "test-redeliver")
    status_topic = DeviceTopics("pi-mqtt").topic(TopicKind.STATUS)
    probe.subscribe(status_topic)
    command = fleet_pb2.Command.FromString(
        probe.subscribe(DeviceTopics("pi-mqtt").topic(TopicKind.DESIRED))
        and wait_for(
            lambda: probe.received(DeviceTopics("pi-mqtt").topic(TopicKind.DESIRED)),
            timeout_s=5,
            what="the retained desired variant",
        )[0].payload
    )
    assert command.deploy.deployment_id == deployment.id
    for _ in range(2):
        probe.publish(
            DeviceTopics("pi-mqtt").topic(TopicKind.COMMANDS), command.SerializeToString()
        )
    wait_for(
        lambda: agent.log().count(f"ignoring command {command.command_id}") >= 2,
        timeout_s=10,
        what="the agent ignoring the redelivered command",
    )
    time.sleep(1.0)
    assert probe.received(status_topic) == [], "a redelivered command must not run again"
    assert serving_variant(agent) == variant_id
    probe.close()

    # kill -9: no clean DISCONNECT, so the broker publishes the agent's will.
    agent.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(
        lambda: device_state(controller, "pi-mqtt") is DeviceState.OFFLINE,
        timeout_s=1.5 * KEEPALIVE_S + 2,
        what="the will marking the device offline",
    )
    assert time.monotonic() - killed_at <= 1.5 * KEEPALIVE_S + 1


def test_mqtt_frozen_agent_offline_within_keepalive(mqtt_fleet, broker, start_agent):
    controller, _profile = mqtt_fleet
    agent = start_agent("pi-frozen", broker=broker.url, keepalive_s=KEEPALIVE_S)
    wait_for(
        lambda: device_state(controller, "pi-frozen") is DeviceState.ONLINE,
        timeout_s=30,
        what="the agent coming online",
    )

    presence_topic = DeviceTopics("pi-frozen").topic(TopicKind.PRESENCE)
    probe = MqttProbe(broker, "test-presence")
    probe.subscribe(presence_topic)

    def offline_will_at() -> float | None:
        offline = fleet_pb2.PRESENCE_STATE_OFFLINE
        for arrived, message in list(probe.arrivals):
            presence = fleet_pb2.Presence.FromString(message.payload)
            if message.topic == presence_topic and presence.state == offline:
                return arrived
        return None

    # SIGSTOP keeps the TCP connection open, so only the keepalive timer can notice.
    agent.process.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        limit_s = 1.5 * KEEPALIVE_S + MOSQUITTO_KEEPALIVE_CHECK_S
        will_at = wait_for(offline_will_at, timeout_s=limit_s + 2, what="the will")
        # Timed at the broker, so load on the controller cannot blur it.
        assert will_at - stopped_at <= limit_s
        wait_for(
            lambda: device_state(controller, "pi-frozen") is DeviceState.OFFLINE,
            timeout_s=10,
            what="the controller storing the will",
        )
    finally:
        agent.process.send_signal(signal.SIGCONT)
        probe.close()


def test_mqtt_download_resumes_after_broker_restart(mqtt_fleet, broker, start_agent, monkeypatch):
    controller, profile = mqtt_fleet
    variant_id = store_large_ladder(controller, profile)
    served: list[tuple[float, int]] = []
    lock = threading.Lock()
    original = mqtt_endpoint.read_artifact_chunk

    def slow_chunk(ctrl, request):
        # One chunk at a time, slowly, so the restart lands mid-transfer.
        with lock:
            time.sleep(0.15)
            served.append((time.monotonic(), request.offset))
            return original(ctrl, request)

    monkeypatch.setattr(mqtt_endpoint, "read_artifact_chunk", slow_chunk)
    agent = start_agent("pi-resume", broker=broker.url, profile_name="mqtt-board")
    wait_for(lambda: len(served) >= 6, timeout_s=60, what="the first chunks")

    broker.restart()
    restarted_at = time.monotonic()

    wait_for(lambda: serving_variant(agent) == variant_id, timeout_s=90, what="the deployment")
    after = [offset for when, offset in served if when > restarted_at]
    size = controller.ladder("pi-resume")[0].size_bytes
    assert after, "no chunk was requested after the restart"
    assert min(after) > 0, "the download started over instead of resuming"
    assert "resuming download of" in agent.log()
    assert sum(1 for _when, offset in served if offset == 0) == 1
    assert len({offset for _when, offset in served}) * 256 * 1024 >= size


# -- ACL of deploy/mosquitto -------------------------------------------------------------


@pytest.fixture
def acl_broker(start_broker, tmp_path):
    passwords = tmp_path / "passwd"
    users = {"edgefleet-controller": "controller-secret", "pi-a": "secret-a", "pi-b": "secret-b"}
    for index, (user, password) in enumerate(users.items()):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(passwords), user, password], check=True
        )
    passwords.chmod(0o644)
    return start_broker(
        settings=f"allow_anonymous false\npassword_file {passwords}\nacl_file {ACL_FILE}\n"
    )


def test_mqtt_duplicate_device_id_alert(mqtt_fleet, broker, tmp_path):
    controller, profile = mqtt_fleet
    # The broker drops the older connection of a client id; both agents keep reconnecting.
    connect_args = ["--transport", "mqtt", "--broker", broker.url]
    agents = [
        AgentProcess("twin", profile, tmp_path / f"copy-{index}" / "twin", 0,
                     connect_args=connect_args)
        for index in range(2)
    ]  # fmt: skip

    def duplicate_alert():
        events = controller.registry.list_events(device_id="twin", kinds=[EventKind.ALERT])
        return next((e for e in events if e.details.get("cause") == "duplicate_device_id"), None)

    try:
        alert = wait_for(duplicate_alert, timeout_s=60, what="the duplicate device id alert")
        assert "two agents probably run with this device id" in alert.reason
    finally:
        for agent in agents:
            agent.stop()


def test_acl_confines_device_to_own_topics(acl_broker):
    controller = MqttProbe(acl_broker, "controller", username="edgefleet-controller",
                           password="controller-secret")  # fmt: skip
    device_a = MqttProbe(acl_broker, "pi-a", username="pi-a", password="secret-a")
    topics_a, topics_b = DeviceTopics("pi-a"), DeviceTopics("pi-b")
    try:
        shared = "$share/acl-test/edgefleet/v1/devices/+/telemetry"
        assert not controller.subscribe(shared)[0].is_failure
        assert not device_a.subscribe(topics_a.topic(TopicKind.COMMANDS))[0].is_failure

        # Another device's topics, or all devices': Mosquitto 2.0.11 refuses some
        # subscriptions outright and grants others, but then delivers nothing on them.
        foreign = (
            topics_b.topic(TopicKind.COMMANDS),
            topics_b.topic(TopicKind.DESIRED),
            "edgefleet/v1/devices/+/commands",
            "edgefleet/v1/#",
        )
        for topic in foreign:
            device_a.subscribe(topic)
        controller.publish(topics_b.topic(TopicKind.COMMANDS), b"for pi-b")
        controller.publish(topics_b.topic(TopicKind.DESIRED), b"for pi-b", retain=True)
        controller.publish(topics_a.topic(TopicKind.COMMANDS), b"for pi-a")
        wait_for(lambda: device_a.messages, timeout_s=5, what="pi-a's own command")
        time.sleep(0.5)
        # Overlapping subscriptions each deliver pi-a's own command; nothing else arrives.
        assert {m.payload for m in device_a.messages} == {b"for pi-a"}
        assert {m.topic for m in device_a.messages} == {topics_a.topic(TopicKind.COMMANDS)}

        # Publishing as another device, or on a controller topic, is dropped.
        device_a.publish(topics_b.topic(TopicKind.TELEMETRY), b"forged")
        device_a.publish(topics_a.topic(TopicKind.COMMANDS), b"forged")
        device_a.publish(topics_a.topic(TopicKind.TELEMETRY), b"genuine")
        wait_for(lambda: controller.messages, timeout_s=5, what="the genuine sample")
        time.sleep(0.5)
        assert [m.payload for m in controller.messages] == [b"genuine"]
        assert [m.topic for m in controller.messages] == [topics_a.topic(TopicKind.TELEMETRY)]
    finally:
        controller.close()
        device_a.close()


def test_acl_admits_agent_subscriptions_and_rejects_bad_password(acl_broker, tmp_path):
    address = BrokerAddress.parse(f"mqtt://127.0.0.1:{acl_broker.port}")
    good = MqttConnection(BrokerSettings(address, username="pi-a", password="secret-a"), "pi-a")
    try:
        good.connect()  # subscribes to every topic the agent reads
    finally:
        good.close()

    bad = MqttConnection(BrokerSettings(address, username="pi-a", password="wrong"), "pi-a")
    with pytest.raises(RegistrationRejected, match="user name and password"):
        bad.connect()
    bad.close()


def test_mqtt_restarted_controller_keeps_served_variant(
    broker, start_controller, start_agent, tmp_path
):
    fleet = start_controller(fleet_config())
    settings = BrokerSettings.from_options(broker.url)
    fleet.controller.serve_mqtt(settings)
    profile = write_profile(tmp_path / "shared.toml", "mqtt-board")
    data, manifest = linear_variant(8, scale=2.0)
    variant_id = store_ladder(fleet.controller, load_profile(profile), data, manifest).variant_id
    # The agent connects serving nothing, so its first retained presence names no variant.
    agent = start_agent("pi-restart", broker=broker.url, profile_name="mqtt-board")
    wait_for(lambda: serving_variant(agent) == variant_id, timeout_s=60, what="the deployment")
    wait_for(
        lambda: (
            fleet.controller.registry.latest_deployment("pi-restart").state
            is DeploymentState.ACTIVE
        ),
        timeout_s=15,
        what="the ACTIVE status",
    )
    deployment_id = fleet.controller.registry.latest_deployment("pi-restart").id
    probe = MqttProbe(broker, "test-presence")
    presence_topic = DeviceTopics("pi-restart").topic(TopicKind.PRESENCE)
    probe.subscribe(presence_topic)
    retained = wait_for(lambda: probe.received(presence_topic), timeout_s=10, what="presence")
    probe.close()
    assert fleet_pb2.Presence.FromString(retained[-1].payload).current_variant_id == variant_id

    fleet.stop()
    controller = fleet.start()
    controller.serve_mqtt(settings)
    wait_for(
        lambda: controller.sessions.is_connected("pi-restart"), timeout_s=15, what="the session"
    )
    # Placement and redeployment run right after the session opens; give them time.
    time.sleep(3)

    assert controller.registry.latest_deployment("pi-restart").id == deployment_id
    assert controller.registry.get_device("pi-restart").current_variant_id == variant_id
    assert serving_variant(agent) == variant_id
