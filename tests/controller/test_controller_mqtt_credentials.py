"""Per-device MQTT credentials written by the controller, enforced by a real Mosquitto."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from controller_support import PROFILE_FIELDS
from mosquitto_support import MosquittoBroker, MqttProbe, wait_until
from security_support import enroll_device

from edgefleet.controller.models import EventKind
from edgefleet.controller.mosquitto import MosquittoCredentials, hash_password
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile, parse_profile
from edgefleet.protos.mqtt import (
    BrokerAddress,
    BrokerSettings,
    DeviceTopics,
    TopicKind,
    request_properties,
)
from edgefleet.protos.v1 import fleet_pb2

CONTROLLER_USER = "edgefleet-controller"
CONTROLLER_PASSWORD = "controller-secret"
NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87


@pytest.fixture
def broker_files(tmp_path: Path) -> tuple[Path, Path]:
    password_file = tmp_path / "broker" / "passwd"
    acl_file = tmp_path / "broker" / "acl"
    password_file.parent.mkdir()
    password_file.write_text(f"{CONTROLLER_USER}:{hash_password(CONTROLLER_PASSWORD)}\n")
    acl_file.write_text(f"user {CONTROLLER_USER}\ntopic readwrite edgefleet/v1/#\n")
    for path in (password_file, acl_file):
        path.chmod(0o600)
    return password_file, acl_file


@pytest.fixture
def enrolled(
    controller: Controller, broker_files: tuple[Path, Path], tmp_path: Path
) -> dict[str, str]:
    controller.serve_grpc(host="127.0.0.1", port=0, tls=True, enroll_port=0)
    controller.manage_broker_credentials(*broker_files)
    passwords = {}
    for device_id in ("dev-a", "dev-b"):
        identity = enroll_device(controller, device_id, tmp_path / device_id)
        assert identity.mqtt_username == device_id
        assert identity.mqtt_password
        passwords[device_id] = identity.mqtt_password
    return passwords


def start_broker(directory: Path, broker_files: tuple[Path, Path], extra: str = ""):
    """Start a broker that reads the controller's password and ACL files."""
    password_file, acl_file = broker_files
    broker = MosquittoBroker(
        directory,
        settings=(
            "allow_anonymous false\n"
            f"password_file {password_file}\n"
            f"acl_file {acl_file}\n"
            "log_type debug\n"
            f"{extra}"
        ),
    )
    broker.start()
    return broker


@pytest.fixture
def broker(tmp_path: Path, broker_files: tuple[Path, Path], enrolled: dict[str, str]):
    broker = start_broker(tmp_path / "mosquitto", broker_files)
    yield broker
    broker.stop()


def _probe(broker: MosquittoBroker, device_id: str, password: str) -> MqttProbe:
    return MqttProbe(broker, f"probe-{device_id}", username=device_id, password=password)


def test_password_file_entries_private(broker_files: tuple[Path, Path], enrolled) -> None:
    password_file, acl_file = broker_files
    lines = password_file.read_text().splitlines()

    assert [line.split(":")[0] for line in lines] == [CONTROLLER_USER, "dev-a", "dev-b"]
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in lines)
    assert os.stat(password_file).st_mode & 0o077 == 0
    assert "user dev-a" in acl_file.read_text()


def test_new_broker_files_private(tmp_path: Path) -> None:
    credentials = MosquittoCredentials(tmp_path / "new" / "passwd", tmp_path / "new" / "acl")

    credentials.add_device("dev-a")

    for path in (credentials.password_file, credentials.acl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_edits_keep_broker_file_owner_and_mode(tmp_path: Path) -> None:
    """The broker reads these files as its own user, so an edit must keep them readable."""
    credentials = MosquittoCredentials(tmp_path / "passwd", tmp_path / "acl")
    # Only root can give a file to another user; others check that mode and owner stay.
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        owner = (nobody.pw_uid, nobody.pw_gid)
    else:
        owner = (os.geteuid(), os.getegid())
    for path in (credentials.password_file, credentials.acl_file):
        path.write_text("")
        path.chmod(0o640)
        os.chown(path, *owner)

    credentials.add_device("dev-a")
    credentials.remove_device("dev-a")

    for path in (credentials.password_file, credentials.acl_file):
        status = path.stat()
        assert stat.S_IMODE(status.st_mode) == 0o640, path
        assert (status.st_uid, status.st_gid) == owner, path


def test_device_confined_to_own_topics(
    controller: Controller, broker: MosquittoBroker, enrolled: dict[str, str]
) -> None:
    controller.serve_mqtt(
        BrokerSettings(
            address=BrokerAddress.parse(broker.url),
            username=CONTROLLER_USER,
            password=CONTROLLER_PASSWORD,
        )
    )
    own = DeviceTopics("dev-a")
    other = DeviceTopics("dev-b")
    probe = _probe(broker, "dev-a", enrolled["dev-a"])
    sender = MqttProbe(
        broker, "probe-controller", username=CONTROLLER_USER, password=CONTROLLER_PASSWORD
    )
    try:
        own_publish = probe.publish(own.topic(TopicKind.STATUS), b"")
        cross_publish = probe.publish(other.topic(TopicKind.TELEMETRY), b"forged")
        # Mosquitto 2.0 grants a subscription to another device's topic but delivers
        # nothing on it, so delivery is what the test checks.
        probe.subscribe(own.topic(TopicKind.COMMANDS))
        probe.subscribe(other.topic(TopicKind.COMMANDS))
        sender.publish(other.topic(TopicKind.COMMANDS), b"for dev-b")
        sender.publish(own.topic(TopicKind.COMMANDS), b"for dev-a")
        wait_until(lambda: probe.messages, what="dev-a's own command")
        time.sleep(0.5)
        received = [message.payload for message in probe.messages]
    finally:
        probe.close()
        sender.close()

    assert own_publish.value == 0
    assert cross_publish.value == NOT_AUTHORIZED
    assert received == [b"for dev-a"]
    wait_until(
        lambda: "Denied PUBLISH from probe-dev-a" in broker.log(),
        what="the broker's log of the denied publish",
    )
    assert f"'{other.topic(TopicKind.TELEMETRY)}'" in broker.log()
    assert controller.registry.count_telemetry("dev-b") == 0


def test_device_cannot_take_another_client_id(
    tmp_path: Path, broker_files: tuple[Path, Path], enrolled: dict[str, str]
) -> None:
    # As in deploy/mosquitto/mosquitto.conf, which binds each client id to its user name.
    broker = start_broker(
        tmp_path / "bound-ids", broker_files, extra="use_username_as_clientid true\n"
    )
    try:
        victim = MqttProbe(broker, "dev-a", username="dev-a", password=enrolled["dev-a"])
        intruder = MqttProbe(broker, "dev-a", username="dev-b", password=enrolled["dev-b"])
        try:
            assert intruder.connack == 0
            time.sleep(0.5)

            assert "Client dev-a already connected, closing old connection" not in broker.log()
            assert victim.client.is_connected()
        finally:
            intruder.close()
            victim.close()
    finally:
        broker.stop()


def test_wrong_password_rejected(broker: MosquittoBroker, enrolled: dict[str, str]) -> None:
    probe = _probe(broker, "dev-a", enrolled["dev-b"])
    try:
        assert probe.connack.is_failure
    finally:
        probe.close()


def test_revoked_device_loses_broker_access(
    controller: Controller, broker: MosquittoBroker, enrolled: dict[str, str]
) -> None:
    controller.revoke_device("dev-a")
    assert broker.process is not None
    # Mosquitto re-reads its password and ACL files on SIGHUP.
    broker.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)

    revoked = _probe(broker, "dev-a", enrolled["dev-a"])
    still_enrolled = _probe(broker, "dev-b", enrolled["dev-b"])
    try:
        assert revoked.connack.is_failure
        assert not still_enrolled.connack.is_failure
    finally:
        revoked.close()
        still_enrolled.close()


def _serve_mqtt(controller: Controller, broker: MosquittoBroker) -> None:
    controller.serve_mqtt(
        BrokerSettings(
            address=BrokerAddress.parse(broker.url),
            username=CONTROLLER_USER,
            password=CONTROLLER_PASSWORD,
        )
    )


def test_agent_connects_with_enrolled_credentials(
    controller: Controller, broker: MosquittoBroker, enrolled: dict[str, str], tmp_path: Path
) -> None:
    _serve_mqtt(controller, broker)
    profile_path = tmp_path / "board.toml"
    profile_path.write_text(
        'name = "mqtt-board"\ncpu_arch = "x86_64"\ncpu_cores = 2\ncpu_flags = []\n'
        "memory_mb = 1024\nmodel_memory_budget_mb = 128\nlatency_budget_ms = 20.0\n"
        "inference_threads = 1\n"
    )
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        # No --mqtt-password-file: the agent takes the password stored at enrollment.
        agent = subprocess.Popen(
            [
                sys.executable, "-m", "edgefleet", "agent", "run",
                "--transport", "mqtt", "--broker", broker.url,
                "--profile", str(profile_path),
                "--device-id", "dev-a",
                "--state-dir", str(tmp_path / "dev-a"),
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until(
                lambda: controller.sessions.is_connected("dev-a"),
                timeout_s=60,
                what=f"dev-a online over MQTT; agent log:\n{log_path.read_text()}",
            )
        finally:
            agent.terminate()
            agent.wait(timeout=30)


def test_revoked_device_registration_rejected_before_reload(
    controller: Controller, broker: MosquittoBroker, enrolled: dict[str, str]
) -> None:
    _serve_mqtt(controller, broker)
    controller.revoke_device("dev-a")
    topics = DeviceTopics("dev-a")
    # The broker has not reloaded its files, so the old password still connects.
    probe = _probe(broker, "dev-a", enrolled["dev-a"])
    try:
        probe.subscribe(topics.topic(TopicKind.REGISTER_REPLY))
        request = fleet_pb2.RegisterRequest(device_id="dev-a", profile=_profile().to_proto())
        probe.publish(
            topics.topic(TopicKind.REGISTER),
            request.SerializeToString(),
            properties=request_properties(b"correlation-1"),
        )
        replies = wait_until(
            lambda: probe.received(topics.topic(TopicKind.REGISTER_REPLY)),
            what="the registration reply",
        )
    finally:
        probe.close()

    user_properties = dict(replies[0].properties.UserProperty)
    assert user_properties["status"] == "UNAUTHENTICATED"
    assert "revoked" in user_properties["message"]
    assert controller.registry.find_device("dev-a") is None
    denied = controller.registry.list_events(device_id="dev-a", kinds=[EventKind.ACCESS_DENIED])
    assert denied


def _profile() -> DeviceProfile:
    return parse_profile(PROFILE_FIELDS)


def test_revocation_ends_mqtt_session(
    controller: Controller, broker: MosquittoBroker, enrolled: dict[str, str]
) -> None:
    _serve_mqtt(controller, broker)
    topics = DeviceTopics("dev-a")
    controller.register_device("dev-a", _profile())
    probe = _probe(broker, "dev-a", enrolled["dev-a"])
    try:
        presence = fleet_pb2.Presence(device_id="dev-a", state=fleet_pb2.PRESENCE_STATE_ONLINE)
        probe.publish(topics.topic(TopicKind.PRESENCE), presence.SerializeToString())
        wait_until(lambda: controller.sessions.is_connected("dev-a"), what="dev-a online")

        controller.revoke_device("dev-a")
    finally:
        probe.close()

    assert not controller.sessions.is_connected("dev-a")
    kinds = [event.kind for event in controller.registry.list_events(device_id="dev-a")]
    assert kinds[-2:] == [EventKind.REVOKED, EventKind.DISCONNECTED]
