"""The controller's MQTT endpoint against a real Mosquitto, driven by a plain paho client."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from controller_support import make_sample, store_fake_ladder
from mosquitto_support import MqttProbe, wait_until

from edgefleet.controller.models import DeploymentState, DeviceState
from edgefleet.controller.mqtt_endpoint import stable_client_id
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.mqtt import BrokerSettings, DeviceTopics, TopicKind, request_properties
from edgefleet.protos.v1 import fleet_pb2


def topic(device_id: str, kind: TopicKind) -> str:
    return DeviceTopics(device_id).topic(kind)


@pytest.fixture
def mqtt_controller(broker, controller: Controller) -> Controller:
    controller.serve_mqtt(BrokerSettings.from_options(broker.url))
    return controller


@pytest.fixture
def device(broker):
    probes = []

    def connect(device_id: str = "dev-1") -> MqttProbe:
        probe = MqttProbe(broker, device_id)
        for kind in (
            TopicKind.REGISTER_REPLY,
            TopicKind.COMMANDS,
            TopicKind.DESIRED,
            TopicKind.ARTIFACT_CHUNKS,
        ):
            probe.subscribe(topic(device_id, kind))
        probes.append(probe)
        return probe

    yield connect
    for probe in probes:
        probe.close()


def register(probe: MqttProbe, profile: DeviceProfile, device_id: str = "dev-1", **fields):
    request = fleet_pb2.RegisterRequest(device_id=device_id, profile=profile.to_proto(), **fields)
    correlation = f"corr-{len(probe.messages)}".encode()
    probe.publish(
        topic(device_id, TopicKind.REGISTER),
        request.SerializeToString(),
        properties=request_properties(correlation),
    )
    reply_topic = topic(device_id, TopicKind.REGISTER_REPLY)
    return wait_until(
        lambda: next(
            (m for m in probe.received(reply_topic)
             if m.properties.CorrelationData == correlation),
            None,
        ),
        what="the registration reply",
    )  # fmt: skip


def go_online(probe: MqttProbe, device_id: str = "dev-1", variant: str = "") -> None:
    presence = fleet_pb2.Presence(
        device_id=device_id, state=fleet_pb2.PRESENCE_STATE_ONLINE, current_variant_id=variant
    )
    probe.publish(topic(device_id, TopicKind.PRESENCE), presence.SerializeToString(), retain=True)


def test_mqtt_register_replies_with_response(mqtt_controller, device, profile):
    reply = register(device(), profile)

    response = fleet_pb2.RegisterResponse.FromString(reply.payload)
    assert response.device_id == "dev-1"
    assert response.profile_fingerprint == profile.fingerprint
    assert not getattr(reply.properties, "UserProperty", None)
    assert mqtt_controller.registry.get_device("dev-1").profile_fingerprint == profile.fingerprint


def test_mqtt_register_rejects_other_device_id(mqtt_controller, device, profile):
    probe = device("dev-1")
    request = fleet_pb2.RegisterRequest(device_id="dev-2", profile=profile.to_proto())
    probe.publish(
        topic("dev-1", TopicKind.REGISTER),
        request.SerializeToString(),
        properties=request_properties(b"x"),
    )

    reply = wait_until(lambda: probe.received(topic("dev-1", TopicKind.REGISTER_REPLY)))[0]
    properties = dict(reply.properties.UserProperty)
    assert properties["status"] == "INVALID_ARGUMENT"
    assert "does not match" in properties["message"]
    assert mqtt_controller.registry.find_device("dev-2") is None


def test_mqtt_telemetry_stored_in_batches(mqtt_controller, device, profile):
    probe = device()
    register(probe, profile)
    for seq in range(1, 41):
        probe.client.publish(
            topic("dev-1", TopicKind.TELEMETRY),
            make_sample(seq=seq).SerializeToString(),
            qos=1,
        )

    wait_until(lambda: mqtt_controller.registry.count_telemetry("dev-1") == 40, what="40 samples")
    stored = mqtt_controller.registry.recent_telemetry("dev-1", limit=40)
    assert sorted(record.seq for record in stored) == list(range(1, 41))
    assert mqtt_controller.registry.get_device("dev-1").last_seen is not None


def test_mqtt_telemetry_of_unregistered_device_dropped(mqtt_controller, device):
    probe = device("ghost")
    probe.publish(topic("ghost", TopicKind.TELEMETRY), make_sample("ghost").SerializeToString())

    wait_until(lambda: mqtt_controller.dropped_samples("ghost") == 1, what="the drop")
    assert mqtt_controller.registry.count_telemetry("ghost") == 0


def test_shared_subscription_splits_telemetry(tmp_path, controller_config, broker, device, profile):
    controllers = []
    for index in range(2):
        # One database, as replicas share PostgreSQL in production.
        replica = Controller(
            controller_config,
            data_dir=tmp_path / f"replica-{index}",
            database_url=f"sqlite:///{tmp_path / 'shared.db'}",
        )
        replica.start()
        replica.serve_mqtt(BrokerSettings.from_options(broker.url), group="split-test")
        controllers.append(replica)
    try:
        probe = device()
        register(probe, profile)
        for seq in range(1, 61):
            probe.publish(
                topic("dev-1", TopicKind.TELEMETRY), make_sample(seq=seq).SerializeToString()
            )

        wait_until(
            lambda: controllers[0].registry.count_telemetry("dev-1") == 60, what="60 samples"
        )
        received = [replica._mqtt_endpoint.telemetry_received for replica in controllers]
        assert sum(received) == 60
        assert all(count > 0 for count in received), received
    finally:
        for replica in controllers:
            replica.shutdown(grace_s=0.5)


def test_restarted_controller_gets_queued_telemetry(
    tmp_path, controller_config, broker, device, profile
):
    def start() -> Controller:
        controller = Controller(controller_config, data_dir=tmp_path / "controller")
        controller.start()
        controller.serve_mqtt(BrokerSettings.from_options(broker.url))
        return controller

    first = start()
    probe = device()
    register(probe, profile)
    first.shutdown(grace_s=0.5)

    # The broker acknowledges these while no controller is connected.
    for seq in range(1, 21):
        probe.publish(topic("dev-1", TopicKind.TELEMETRY), make_sample(seq=seq).SerializeToString())
    second = start()
    try:
        wait_until(lambda: second.registry.count_telemetry("dev-1") == 20, what="20 samples")
    finally:
        second.shutdown(grace_s=0.5)

    assert second.dropped_samples("dev-1") == 0


def test_controller_client_id_stable_per_data_dir(tmp_path) -> None:
    first = stable_client_id(tmp_path / "a")

    assert stable_client_id(tmp_path / "a") == first
    assert stable_client_id(tmp_path / "b") != first
    assert first.startswith("edgefleet-controller-")


def test_mqtt_presence_opens_session_and_will_closes_it(mqtt_controller, broker, device, profile):
    probe = device()
    register(probe, profile)
    go_online(probe)
    wait_until(lambda: mqtt_controller.sessions.is_connected("dev-1"), what="the session")
    assert mqtt_controller.registry.get_device("dev-1").state is DeviceState.ONLINE

    offline = fleet_pb2.Presence(device_id="dev-1", state=fleet_pb2.PRESENCE_STATE_OFFLINE)
    probe.publish(topic("dev-1", TopicKind.PRESENCE), offline.SerializeToString(), retain=True)

    wait_until(lambda: not mqtt_controller.sessions.is_connected("dev-1"), what="the close")
    assert mqtt_controller.registry.get_device("dev-1").state is DeviceState.OFFLINE


def test_mqtt_deploy_publishes_command_and_retained_desired(
    mqtt_controller, broker, device, profile
):
    _model, ladder = store_fake_ladder(mqtt_controller, profile)
    probe = device()
    register(probe, profile)
    go_online(probe)
    wait_until(lambda: mqtt_controller.sessions.is_connected("dev-1"), what="the session")
    # Registration placed the device on the most accurate rung.
    commands = wait_until(lambda: probe.received(topic("dev-1", TopicKind.COMMANDS)))
    command = fleet_pb2.Command.FromString(commands[0].payload)
    assert command.deploy.manifest.variant_id == ladder[0]
    assert not commands[0].retain

    late = MqttProbe(broker, "late-reader")
    late.subscribe(topic("dev-1", TopicKind.DESIRED))
    desired = wait_until(lambda: late.received(topic("dev-1", TopicKind.DESIRED)))
    late.close()
    assert desired[0].retain, "the desired variant must be retained for late subscribers"
    assert fleet_pb2.Command.FromString(desired[0].payload).command_id == command.command_id

    deployment_id = command.deploy.deployment_id
    for state in (fleet_pb2.DEPLOYMENT_STATE_DOWNLOADING, fleet_pb2.DEPLOYMENT_STATE_ACTIVE):
        status = fleet_pb2.DeploymentStatus(
            device_id="dev-1", deployment_id=deployment_id, variant_id=ladder[0], state=state
        )
        probe.publish(topic("dev-1", TopicKind.STATUS), status.SerializeToString())

    def active():
        return (
            mqtt_controller.registry.find_deployment(deployment_id).state is DeploymentState.ACTIVE
        )

    wait_until(active, what="the deployment becoming active")
    assert mqtt_controller.registry.get_device("dev-1").current_variant_id == ladder[0]


def test_mqtt_artifact_chunk_has_offset_and_crc(mqtt_controller, device, profile):
    probe = device()
    register(probe, profile)
    data = bytes(range(256)) * 4096  # 1 MiB
    sha256 = mqtt_controller.artifacts.put_bytes(data).sha256

    for offset in (0, 300_000, len(data)):
        request = fleet_pb2.ArtifactRequest(
            device_id="dev-1", sha256=sha256, offset=offset, chunk_size=100_000
        )
        probe.publish(topic("dev-1", TopicKind.ARTIFACT_REQUEST), request.SerializeToString())
    chunks_topic = topic("dev-1", TopicKind.ARTIFACT_CHUNKS)
    replies = wait_until(
        lambda: len(probe.received(chunks_topic)) == 3 and probe.received(chunks_topic)
    )

    chunks = sorted(
        (fleet_pb2.ArtifactChunk.FromString(reply.payload) for reply in replies),
        key=lambda chunk: chunk.offset,
    )
    assert [chunk.offset for chunk in chunks] == [0, 300_000, len(data)]
    assert [len(chunk.data) for chunk in chunks] == [100_000, 100_000, 0]
    for chunk in chunks:
        assert chunk.total_size == len(data)
        assert chunk.data == data[chunk.offset : chunk.offset + len(chunk.data)]
        assert chunk.crc32 == zlib.crc32(chunk.data)


def test_mqtt_artifact_unknown_digest_replies_not_found(mqtt_controller, device, profile):
    probe = device()
    register(probe, profile)
    request = fleet_pb2.ArtifactRequest(device_id="dev-1", sha256="0" * 64, offset=0)
    probe.publish(topic("dev-1", TopicKind.ARTIFACT_REQUEST), request.SerializeToString())

    reply = wait_until(lambda: probe.received(topic("dev-1", TopicKind.ARTIFACT_CHUNKS)))[0]
    assert dict(reply.properties.UserProperty)["status"] == "NOT_FOUND"
    assert reply.payload == b""


def test_serve_with_mqtt_url_connects_to_broker(tmp_path: Path, broker) -> None:
    command = [
        sys.executable, "-m", "edgefleet", "controller", "serve",
        "--data-dir", str(tmp_path / "data"), "--grpc-port", "0", "--mqtt-url", broker.url,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        second = process.stdout.readline()
        assert re.match(r"edgefleet controller listening on 127\.0\.0\.1:\d+", first), first
        assert f"serving MQTT devices through {broker.url}" in second
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err[-2000:]


def test_serve_rejects_invalid_mqtt_url(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet", "controller", "serve", "--data-dir", str(tmp_path),
         "--mqtt-url", "http://127.0.0.1:1883"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 2
    assert "invalid broker URL" in result.stderr


def test_mqtt_registration_burst_gets_every_reply(mqtt_controller, device, profile):
    # Sent without waiting, so the control thread finds many registrations queued and
    # stores them together; one invalid request among them must fail alone.
    device_ids = [f"burst-{index:02d}" for index in range(30)]
    probe = device("burst-probe")
    for device_id in device_ids:
        probe.subscribe(topic(device_id, TopicKind.REGISTER_REPLY))
    for index, device_id in enumerate(device_ids):
        claimed = "someone-else" if index == 7 else device_id
        request = fleet_pb2.RegisterRequest(device_id=claimed, profile=profile.to_proto())
        probe.publish(
            topic(device_id, TopicKind.REGISTER),
            request.SerializeToString(),
            properties=request_properties(device_id.encode()),
        )
        go_online(probe, device_id)

    replies = {
        device_id: wait_until(
            lambda device_id=device_id: probe.received(topic(device_id, TopicKind.REGISTER_REPLY)),
            what=f"the reply to {device_id}",
        )[0]
        for device_id in device_ids
    }
    wait_until(
        lambda: len(mqtt_controller.sessions.connected()) == len(device_ids) - 1,
        what="the sessions",
    )

    rejected = dict(replies.pop("burst-07").properties.UserProperty)
    assert rejected["status"] == "INVALID_ARGUMENT"
    for device_id, reply in replies.items():
        assert reply.properties.CorrelationData == device_id.encode()
        assert fleet_pb2.RegisterResponse.FromString(reply.payload).device_id == device_id
    assert "burst-07" not in mqtt_controller.sessions.connected()
    assert mqtt_controller.registry.find_device("burst-07") is None
    assert mqtt_controller.registry.get_device("burst-03").state is DeviceState.ONLINE
