"""The controller's MQTT endpoint against a real Mosquitto, driven by a plain paho client."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from controller_support import BACKENDS, make_sample, store_fake_ladder
from mosquitto_support import MqttProbe, wait_until

from edgefleet.controller.deployments import MAX_STATUS_MESSAGE_CHARS
from edgefleet.controller.models import DeploymentState, DeviceState, EventKind
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


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_shared_subscription_splits_telemetry(
    tmp_path, controller_config, broker, device, profile, database_url
):
    controllers = []
    for index in range(2):
        # Replicas with their own data directories share one database.
        replica = Controller(
            controller_config,
            data_dir=tmp_path / f"replica-{index}",
            database_url=database_url or f"sqlite:///{tmp_path / 'shared.db'}",
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


def deploy_first_rung(controller: Controller, probe: MqttProbe, profile) -> tuple[str, list[str]]:
    """Register dev-1 online with a fake ladder; returns its deployment id and the ladder."""
    _model, ladder = store_fake_ladder(controller, profile)
    register(probe, profile)
    go_online(probe)
    commands = wait_until(lambda: probe.received(topic("dev-1", TopicKind.COMMANDS)))
    return fleet_pb2.Command.FromString(commands[0].payload).deploy.deployment_id, ladder


def send_status(probe: MqttProbe, deployment_id: str, state: int, **fields) -> None:
    fields.setdefault("device_id", "dev-1")
    status = fleet_pb2.DeploymentStatus(deployment_id=deployment_id, state=state, **fields)
    probe.publish(topic("dev-1", TopicKind.STATUS), status.SerializeToString())


def handled_after(controller: Controller, device, profile) -> None:
    """Wait until the control thread handled what dev-1 sent before now.

    Presence and status share one queue in arrival order, so dev-3 connecting means
    every earlier message was handled.
    """
    probe = device("dev-3")
    register(probe, profile, "dev-3")
    go_online(probe, "dev-3")
    wait_until(lambda: controller.sessions.is_connected("dev-3"), what="dev-3's session")


def test_mqtt_status_for_ended_deployment_ignored(mqtt_controller, device, profile, caplog):
    probe = device()
    deployment_id, ladder = deploy_first_rung(mqtt_controller, probe, profile)
    send_status(probe, deployment_id, fleet_pb2.DEPLOYMENT_STATE_ACTIVE, variant_id=ladder[0])
    wait_until(
        lambda: (
            mqtt_controller.registry.find_deployment(deployment_id).state is DeploymentState.ACTIVE
        ),
        what="the deployment becoming active",
    )

    caplog.set_level(logging.WARNING, logger="edgefleet.controller.deployments")
    for state in (
        fleet_pb2.DEPLOYMENT_STATE_ACTIVE,
        fleet_pb2.DEPLOYMENT_STATE_FAILED,
        fleet_pb2.DEPLOYMENT_STATE_DOWNLOADING,
    ):
        send_status(probe, deployment_id, state, message="late report")
    handled_after(mqtt_controller, device, profile)

    deployment = mqtt_controller.registry.find_deployment(deployment_id)
    assert deployment.state is DeploymentState.ACTIVE
    assert deployment.reason != "late report"
    assert mqtt_controller.registry.get_device("dev-1").current_variant_id == ladder[0]
    ended = [r for r in caplog.records if "which already ended active" in r.getMessage()]
    assert len(ended) == 1, [r.getMessage() for r in caplog.records]
    assert ended[0].levelno == logging.WARNING
    # A repeated ACTIVE report, as a QoS 1 redelivery brings, is not worth a warning.
    assert "reported active" not in ended[0].getMessage()


def test_mqtt_status_naming_other_device_ignored(mqtt_controller, device, profile, caplog):
    probe = device()
    deployment_id, _ladder = deploy_first_rung(mqtt_controller, probe, profile)
    caplog.set_level(logging.WARNING, logger="edgefleet.controller.deployments")

    send_status(probe, deployment_id, fleet_pb2.DEPLOYMENT_STATE_ROLLED_BACK, device_id="evil-3")
    handled_after(mqtt_controller, device, profile)

    assert mqtt_controller.registry.find_deployment(deployment_id).state is DeploymentState.PENDING
    assert not mqtt_controller.registry.list_events(
        device_id="dev-1", kinds=[EventKind.ROLLED_BACK]
    )
    assert "device dev-1 sent a status naming device 'evil-3'; ignoring it" in caplog.text


def test_mqtt_status_on_other_device_topic_ignored(mqtt_controller, device, profile, caplog):
    probe = device()
    deployment_id, _ladder = deploy_first_rung(mqtt_controller, probe, profile)
    register(device("dev-2"), profile, "dev-2")
    caplog.set_level(logging.WARNING, logger="edgefleet.controller.deployments")

    status = fleet_pb2.DeploymentStatus(
        device_id="dev-2", deployment_id=deployment_id, state=fleet_pb2.DEPLOYMENT_STATE_FAILED
    )
    probe.publish(topic("dev-2", TopicKind.STATUS), status.SerializeToString())
    handled_after(mqtt_controller, device, profile)

    assert mqtt_controller.registry.find_deployment(deployment_id).state is DeploymentState.PENDING
    assert f"deployment {deployment_id!r}, which belongs to another device" in caplog.text
    assert "unknown deployment" not in caplog.text


def test_mqtt_status_message_cut(mqtt_controller, device, profile, caplog):
    probe = device()
    deployment_id, _ladder = deploy_first_rung(mqtt_controller, probe, profile)
    caplog.set_level(logging.WARNING, logger="edgefleet.controller.deployments")

    send_status(probe, deployment_id, fleet_pb2.DEPLOYMENT_STATE_FAILED, message="x" * 200_000)
    wait_until(
        lambda: (
            mqtt_controller.registry.find_deployment(deployment_id).state is DeploymentState.FAILED
        ),
        what="the FAILED status",
    )

    reason = mqtt_controller.registry.find_deployment(deployment_id).reason
    assert len(reason) == MAX_STATUS_MESSAGE_CHARS
    assert reason.endswith("x\u2026")
    events = mqtt_controller.registry.list_events(
        device_id="dev-1", kinds=[EventKind.DEPLOY_FAILED]
    )
    assert [len(event.reason) for event in events] == [MAX_STATUS_MESSAGE_CHARS]
    failed = [r for r in caplog.records if "failed: xxx" in r.getMessage()]
    assert len(failed) == 1
    assert len(failed[0].getMessage()) < MAX_STATUS_MESSAGE_CHARS + 300


def test_mqtt_presence_of_wrong_type_dropped(mqtt_controller, device, profile, caplog):
    probe = device()
    register(probe, profile)
    caplog.set_level(logging.WARNING, logger="edgefleet.controller.mqtt_endpoint")

    # A TelemetrySample's seq (field 2) decodes as Presence.state ONLINE.
    sample = fleet_pb2.TelemetrySample(device_id="c1", seq=1)
    probe.publish(topic("dev-1", TopicKind.PRESENCE), sample.SerializeToString())
    other = fleet_pb2.Presence(device_id="dev-9", state=fleet_pb2.PRESENCE_STATE_ONLINE)
    probe.publish(topic("dev-1", TopicKind.PRESENCE), other.SerializeToString())
    handled_after(mqtt_controller, device, profile)

    assert not mqtt_controller.sessions.is_connected("dev-1")
    assert not mqtt_controller.registry.list_events(device_id="dev-1", kinds=[EventKind.CONNECTED])
    drops = [r for r in caplog.records if "presence topic of device dev-1" in r.getMessage()]
    assert len(drops) == 1, "the second drop within a minute is counted, not logged"
    assert "presence names device 'c1', not the topic's" in drops[0].getMessage()


def test_mqtt_undecodable_flood_logs_one_line_per_kind(mqtt_controller, device, profile, caplog):
    probe = device()
    register(probe, profile)
    caplog.set_level(logging.INFO, logger="edgefleet.controller")
    garbage = b"\xff" * 16

    for _ in range(200):
        probe.client.publish(topic("dev-1", TopicKind.STATUS), garbage, qos=1)
        probe.client.publish(topic("dev-1", TopicKind.PRESENCE), garbage, qos=1)
        probe.client.publish(topic("dev-1", TopicKind.ARTIFACT_REQUEST), garbage, qos=1)
    endpoint = mqtt_controller._mqtt_endpoint
    wait_until(lambda: endpoint.dropped_messages == 600, timeout_s=30, what="600 drops")

    records = [r for r in caplog.records if "device dev-1" in r.getMessage()]
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    for kind in ("status", "presence", "artifacts/request"):
        lines = [r for r in records if f"on the {kind} topic of device dev-1" in r.getMessage()]
        assert len(lines) == 1, (kind, [r.getMessage() for r in records])
        assert lines[0].levelno == logging.WARNING
    # One error reply for the flood of undecodable artifact requests.
    chunks_topic = topic("dev-1", TopicKind.ARTIFACT_CHUNKS)
    replies = probe.received(chunks_topic)
    assert len(replies) == 1
    assert dict(replies[0].properties.UserProperty)["status"] == "INVALID_ARGUMENT"

    # A valid request still gets its reply.
    request = fleet_pb2.ArtifactRequest(device_id="dev-1", sha256="0" * 64, offset=0)
    probe.publish(topic("dev-1", TopicKind.ARTIFACT_REQUEST), request.SerializeToString())
    reply = wait_until(lambda: probe.received(chunks_topic)[1:])[0]
    assert dict(reply.properties.UserProperty)["status"] == "NOT_FOUND"


def test_mqtt_repeated_online_adds_no_event(mqtt_controller, device, profile):
    probe = device()
    register(probe, profile)
    go_online(probe)
    wait_until(lambda: mqtt_controller.sessions.is_connected("dev-1"), what="the session")
    session = mqtt_controller.sessions.get("dev-1")

    for _ in range(20):
        go_online(probe)
    handled_after(mqtt_controller, device, profile)

    connected = mqtt_controller.registry.list_events(device_id="dev-1", kinds=[EventKind.CONNECTED])
    assert len(connected) == 1
    assert mqtt_controller.sessions.get("dev-1") is session
    # Repeats within seconds are how a second agent with this device id shows.
    alerts = mqtt_controller.registry.list_events(device_id="dev-1", kinds=[EventKind.ALERT])
    assert [alert.details["cause"] for alert in alerts] == ["duplicate_device_id"]


def test_mqtt_presence_after_activation_keeps_session(mqtt_controller, device, profile):
    probe = device()
    deployment_id, ladder = deploy_first_rung(mqtt_controller, probe, profile)
    wait_until(lambda: mqtt_controller.sessions.is_connected("dev-1"), what="the session")
    session = mqtt_controller.sessions.get("dev-1")

    # The agent's order: the ACTIVE status, then its presence naming the new variant.
    send_status(probe, deployment_id, fleet_pb2.DEPLOYMENT_STATE_ACTIVE, variant_id=ladder[0])
    go_online(probe, variant=ladder[0])
    handled_after(mqtt_controller, device, profile)

    assert mqtt_controller.sessions.get("dev-1") is session
    assert mqtt_controller.registry.get_device("dev-1").current_variant_id == ladder[0]
    events = mqtt_controller.registry.list_events(
        device_id="dev-1", kinds=[EventKind.CONNECTED, EventKind.ALERT]
    )
    assert [event.kind for event in events] == [EventKind.CONNECTED]


def test_mqtt_duplicate_telemetry_stored_once(mqtt_controller, device, profile):
    probe = device()
    register(probe, profile)
    telemetry = topic("dev-1", TopicKind.TELEMETRY)
    for _ in range(50):
        probe.client.publish(telemetry, make_sample(seq=7).SerializeToString(), qos=1)
    # An agent whose outbox was recreated starts again at seq 1, with later timestamps.
    for restart_ms in (0, 10_000):
        for seq in (1, 2, 3):
            sample = make_sample(seq=seq, sampled_at_ms=1_700_000_100_000 + restart_ms + seq)
            probe.client.publish(telemetry, sample.SerializeToString(), qos=1)

    wait_until(
        lambda: mqtt_controller.dropped_samples("dev-1") == 49, timeout_s=15, what="49 drops"
    )
    wait_until(
        lambda: mqtt_controller.registry.count_telemetry("dev-1") == 7, what="7 stored samples"
    )
    stored = mqtt_controller.registry.recent_telemetry("dev-1", limit=20)
    assert sorted(record.seq for record in stored) == [1, 1, 2, 2, 3, 3, 7]
