"""The agent's MQTT transport against a real Mosquitto, without a controller."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mosquitto_support import MqttProbe, wait_until

import edgefleet.agent.mqtt as agent_mqtt
from edgefleet.agent.errors import ControllerUnavailable
from edgefleet.agent.mqtt import MqttConnection
from edgefleet.errors import InvalidInputError
from edgefleet.protos.mqtt import BrokerAddress, BrokerSettings, DeviceTopics, TopicKind
from edgefleet.protos.v1 import fleet_pb2


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", BrokerAddress("127.0.0.1", 1884, tls=False)),
        ("mqtts://broker.example", BrokerAddress("broker.example", 8883, tls=True)),
        ("mqtt://[::1]:1883", BrokerAddress("::1", 1883, tls=False)),
    ],
)
def test_broker_url_parsed(url, expected):
    assert BrokerAddress.parse(url) == expected


@pytest.mark.parametrize(
    "url", ["http://host:1883", "mqtt://user:pw@host:1883", "mqtt://:1883", "mqtt://host:99999"]
)
def test_broker_url_invalid_rejected(url):
    with pytest.raises(InvalidInputError, match="invalid broker URL"):
        BrokerAddress.parse(url)


def test_register_without_controller_times_out(broker, monkeypatch):
    monkeypatch.setattr(agent_mqtt, "REPLY_TIMEOUT_S", 0.5)
    connection = MqttConnection(BrokerSettings.from_options(broker.url), "pi-lonely")
    try:
        with pytest.raises(ControllerUnavailable, match="no registration reply"):
            connection.register(fleet_pb2.RegisterRequest(device_id="pi-lonely"))
    finally:
        connection.close()


def test_close_publishes_retained_offline_presence(broker):
    connection = MqttConnection(BrokerSettings.from_options(broker.url), "pi-bye")
    connection.connect()
    connection.close()

    probe = MqttProbe(broker, "presence-reader")
    presence_topic = DeviceTopics("pi-bye").topic(TopicKind.PRESENCE)
    probe.subscribe(presence_topic)
    message = wait_until(lambda: probe.received(presence_topic), what="the presence")[0]
    probe.close()
    assert message.retain
    presence = fleet_pb2.Presence.FromString(message.payload)
    assert presence.state == fleet_pb2.PRESENCE_STATE_OFFLINE


def test_unreachable_broker_is_transient(broker):
    port = broker.port
    broker.stop()
    connection = MqttConnection(BrokerSettings.from_options(f"mqtt://127.0.0.1:{port}"), "pi-1")
    with pytest.raises(ControllerUnavailable, match="cannot connect to broker"):
        connection.connect()


def test_agent_cli_mqtt_needs_broker(tmp_path):
    command = [
        sys.executable, "-m", "edgefleet.agent", "run", "--transport", "mqtt",
        "--profile", "missing.toml", "--device-id", "pi-1", "--state-dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert "--transport mqtt needs --broker" in result.stderr
