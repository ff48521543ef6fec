from __future__ import annotations

import hashlib
import logging
import os
import time

import grpc
import pytest
from controller_support import (
    PROFILE_FIELDS,
    AgentStream,
    make_sample,
    store_fake_ladder,
    wait_for,
)

from edgefleet.controller.grpc_server import RECEIPT_INTERVAL_S
from edgefleet.controller.models import DeviceState, EventKind
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.limits import ARTIFACT_CHUNK_BYTES, MAX_MESSAGE_BYTES
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc


def _register(
    stub: fleet_pb2_grpc.FleetServiceStub, profile: DeviceProfile, device_id: str = "dev-1"
) -> fleet_pb2.RegisterResponse:
    return stub.Register(
        fleet_pb2.RegisterRequest(device_id=device_id, profile=profile.to_proto()), timeout=10
    )


def _status(
    deployment: fleet_pb2.DeployCommand, state: int, message: str = ""
) -> fleet_pb2.AgentMessage:
    return fleet_pb2.AgentMessage(
        status=fleet_pb2.DeploymentStatus(
            device_id="dev-1",
            deployment_id=deployment.deployment_id,
            variant_id=deployment.manifest.variant_id,
            state=state,
            message=message,
        )
    )


# -- Register ----------------------------------------------------------------------------


def test_register_valid_profile(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller, profile: DeviceProfile
) -> None:
    response = _register(stub, profile)

    assert response.device_id == "dev-1"
    assert response.telemetry_interval_s == controller.config.telemetry_interval_s
    assert response.profile_fingerprint == profile.fingerprint
    assert controller.registry.get_device("dev-1").profile_fingerprint == profile.fingerprint


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda request: setattr(request.profile, "cpu_cores", 0), "cpu_cores"),
        (lambda request: request.profile.cpu_flags.append("warp-drive"), "cpu_flags"),
        (lambda request: setattr(request.profile, "latency_budget_ms", float("nan")),
         "latency_budget_ms"),
        (lambda request: setattr(request, "device_id", "bad id!"), "device id"),
        (lambda request: request.ClearField("profile"), "profile is required"),
        (lambda request: setattr(request.calibration, "latency_p50_ms", float("inf")),
         "calibration.reference_sha256"),
    ],
)  # fmt: skip
def test_register_invalid_input_names_field(
    stub: fleet_pb2_grpc.FleetServiceStub, profile: DeviceProfile, mutate, field: str
) -> None:
    request = fleet_pb2.RegisterRequest(device_id="dev-1", profile=profile.to_proto())
    mutate(request)

    with pytest.raises(grpc.RpcError) as raised:
        stub.Register(request, timeout=10)

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()


def test_register_invalid_calibration_latency(
    stub: fleet_pb2_grpc.FleetServiceStub, profile: DeviceProfile
) -> None:
    calibration = fleet_pb2.Calibration(
        reference_sha256="a" * 64, threads=1, runs=20, latency_p50_ms=float("nan"),
        latency_p95_ms=2.0,
    )  # fmt: skip
    request = fleet_pb2.RegisterRequest(
        device_id="dev-1", profile=profile.to_proto(), calibration=calibration
    )

    with pytest.raises(grpc.RpcError) as raised:
        stub.Register(request, timeout=10)

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "calibration.latency_p50_ms" in raised.value.details()


def test_register_with_calibration_sets_latency_scale(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller, profile: DeviceProfile
) -> None:
    from edgefleet.agent.calibration import measure_reference

    calibration = measure_reference(1, duration_s=0.2)
    calibration.latency_p50_ms *= 4  # a device four times slower than this host
    stub.Register(
        fleet_pb2.RegisterRequest(
            device_id="dev-1", profile=profile.to_proto(), calibration=calibration
        ),
        timeout=10,
    )

    assert controller.wait_until_idle(30)
    scale = controller.registry.get_device("dev-1").latency_scale
    assert scale is not None
    assert 1.0 < scale < 16.0


def test_oversized_message_rejected_and_server_keeps_serving(
    grpc_port: int, stub: fleet_pb2_grpc.FleetServiceStub, profile: DeviceProfile
) -> None:
    huge = fleet_pb2.RegisterRequest(
        device_id="dev-1", profile=profile.to_proto(), agent_version="x" * (MAX_MESSAGE_BYTES + 1)
    )
    # A channel without the client-side send limit, so the server's limit is what rejects.
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as unlimited:
        raw_stub = fleet_pb2_grpc.FleetServiceStub(unlimited)
        with pytest.raises(grpc.RpcError) as raised:
            raw_stub.Register(huge, timeout=10)

    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _register(stub, profile).device_id == "dev-1"


# -- Session -----------------------------------------------------------------------------


def test_session_without_hello_rejected(
    stub: fleet_pb2_grpc.FleetServiceStub, profile: DeviceProfile
) -> None:
    _register(stub, profile)
    stream = AgentStream(stub)
    stream.send(fleet_pb2.AgentMessage(telemetry=make_sample()))

    with pytest.raises(grpc.RpcError) as raised:
        next(stream.responses)
    stream.close()

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in raised.value.details()


def test_session_of_unregistered_device_rejected(stub: fleet_pb2_grpc.FleetServiceStub) -> None:
    stream = AgentStream(stub)
    stream.hello("ghost")

    with pytest.raises(grpc.RpcError) as raised:
        next(stream.responses)
    stream.close()

    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "register first" in raised.value.details()


def test_nan_telemetry_dropped_and_stream_stays_up(
    stub: fleet_pb2_grpc.FleetServiceStub,
    controller: Controller,
    profile: DeviceProfile,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, ladder = store_fake_ladder(controller, profile)
    _register(stub, profile)
    assert controller.wait_until_idle(10)
    stream = AgentStream(stub)
    stream.hello("dev-1")
    first = next(stream.responses)  # the initial deployment

    with caplog.at_level(logging.WARNING, logger="edgefleet.controller.telemetry"):
        stream.send(fleet_pb2.AgentMessage(telemetry=make_sample(cpu_percent=float("nan"))))
        stream.send(fleet_pb2.AgentMessage(telemetry=make_sample(load_1m=-1.0, seq=2)))
        stream.send(fleet_pb2.AgentMessage(telemetry=make_sample(seq=3)))
        wait_for(lambda: controller.registry.count_telemetry("dev-1") == 1)
    # The receipt goes out within one receipt interval, so it comes before the command.
    time.sleep(RECEIPT_INTERVAL_S + 1.0)
    # The stream still carries commands after the bad samples.
    controller.deploy("dev-1", ladder[2], reason="test")
    second = next(stream.responses)
    stream.close()

    # The receipt covers the rejected samples too, so the agent never resends them.
    assert stream.receipts[-1] == 3
    assert stream.receipts == sorted(stream.receipts)

    assert first.command.deploy.manifest.variant_id == ladder[0]
    assert second.command.deploy.manifest.variant_id == ladder[2]
    assert controller.dropped_samples("dev-1") == 2
    warnings = [record.getMessage() for record in caplog.records]
    assert any("dev-1" in line and "cpu_percent" in line for line in warnings)
    assert any("dev-1" in line and "load_1m" in line for line in warnings)


def test_deploy_sent_on_connect_and_active_updates_current(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller, profile: DeviceProfile
) -> None:
    _, ladder = store_fake_ladder(controller, profile)
    _register(stub, profile)
    assert controller.wait_until_idle(10)
    stream = AgentStream(stub)
    stream.hello("dev-1")

    command = next(stream.responses).command
    stream.send(_status(command.deploy, fleet_pb2.DEPLOYMENT_STATE_ACTIVE))
    wait_for(lambda: controller.registry.get_device("dev-1").current_variant_id == ladder[0])
    device = controller.registry.get_device("dev-1")
    stream.close()

    assert command.command_id == f"deploy-{command.deploy.deployment_id}"
    assert (
        command.deploy.manifest.sha256
        == controller.registry.ladder(command.deploy.manifest.model_id, profile.fingerprint)[
            0
        ].sha256
    )
    assert device.state is DeviceState.ONLINE
    kinds = [event.kind for event in controller.registry.list_events(device_id="dev-1")]
    assert EventKind.DEPLOYED in kinds


def test_deploy_while_session_opens_is_sent(
    stub: fleet_pb2_grpc.FleetServiceStub,
    controller: Controller,
    profile: DeviceProfile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, ladder = store_fake_ladder(controller, profile)
    _register(stub, profile)
    assert controller.wait_until_idle(10)
    controller.registry.update_device(
        "dev-1", desired_variant_id=ladder[0], current_variant_id=ladder[0]
    )
    deployments = []
    open_session = controller.sessions.open

    def deploy_then_open(session) -> None:
        # An operator's deploy lands after the device row was read, before the session
        # opened, so it finds no session to send its command to.
        deployments.append(controller.deploy("dev-1", ladder[1], reason="operator"))
        open_session(session)

    monkeypatch.setattr(controller.sessions, "open", deploy_then_open)
    stream = AgentStream(stub, timeout_s=15)
    stream.hello("dev-1", current_variant_id=ladder[0])
    command = next(stream.responses).command
    stream.close()

    assert command.deploy.deployment_id == deployments[0].id
    assert command.deploy.manifest.variant_id == ladder[1]


def test_reconnect_resends_unfinished_deployment(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller, profile: DeviceProfile
) -> None:
    store_fake_ladder(controller, profile)
    _register(stub, profile)
    assert controller.wait_until_idle(10)
    first_stream = AgentStream(stub)
    first_stream.hello("dev-1")
    first = next(first_stream.responses).command
    first_stream.close()
    wait_for(lambda: controller.registry.get_device("dev-1").state is DeviceState.OFFLINE)

    second_stream = AgentStream(stub)
    second_stream.hello("dev-1")
    second = next(second_stream.responses).command
    second_stream.close()

    assert second.command_id == first.command_id
    assert second.deploy.manifest == first.deploy.manifest


def test_reconnect_serving_variant_completes_deployment(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller, profile: DeviceProfile
) -> None:
    store_fake_ladder(controller, profile)
    _register(stub, profile)
    assert controller.wait_until_idle(10)
    first_stream = AgentStream(stub)
    first_stream.hello("dev-1")
    deploy = next(first_stream.responses).command.deploy
    # The device applies the variant, but its ACTIVE report never reaches the controller.
    first_stream.close()
    wait_for(lambda: controller.registry.get_device("dev-1").state is DeviceState.OFFLINE)
    assert not controller.registry.find_deployment(deploy.deployment_id).state.is_terminal

    second_stream = AgentStream(stub)
    second_stream.hello("dev-1", current_variant_id=deploy.manifest.variant_id)
    wait_for(
        lambda: controller.registry.find_deployment(deploy.deployment_id).state.value == "active"
    )
    second_stream.close()

    device = controller.registry.get_device("dev-1")
    assert device.current_variant_id == deploy.manifest.variant_id
    deployed = controller.registry.list_events(kinds=[EventKind.DEPLOYED])
    assert [event.to_variant for event in deployed] == [deploy.manifest.variant_id]


def test_failed_deployment_keeps_previous_variant(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller, profile: DeviceProfile
) -> None:
    _, ladder = store_fake_ladder(controller, profile)
    _register(stub, profile)
    assert controller.wait_until_idle(10)
    stream = AgentStream(stub)
    stream.hello("dev-1")
    initial = next(stream.responses).command
    stream.send(_status(initial.deploy, fleet_pb2.DEPLOYMENT_STATE_ACTIVE))
    wait_for(lambda: controller.registry.get_device("dev-1").current_variant_id == ladder[0])

    controller.deploy("dev-1", ladder[1], reason="test")
    failing = next(stream.responses).command
    stream.send(_status(failing.deploy, fleet_pb2.DEPLOYMENT_STATE_FAILED, "sha256 mismatch"))
    wait_for(
        lambda: controller.registry.list_events(device_id="dev-1", kinds=[EventKind.DEPLOY_FAILED])
    )
    device = controller.registry.get_device("dev-1")
    stream.close()

    assert device.current_variant_id == ladder[0]
    assert device.desired_variant_id == ladder[0]
    failed = controller.registry.list_events(device_id="dev-1", kinds=[EventKind.DEPLOY_FAILED])
    assert failed[0].reason == "sha256 mismatch"


def test_latency_breach_steps_device_down(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller, profile: DeviceProfile
) -> None:
    _, ladder = store_fake_ladder(controller, profile)
    _register(stub, profile)
    assert controller.wait_until_idle(10)
    stream = AgentStream(stub)
    stream.hello("dev-1")
    initial = next(stream.responses).command
    stream.send(_status(initial.deploy, fleet_pb2.DEPLOYMENT_STATE_ACTIVE))
    wait_for(lambda: controller.registry.get_device("dev-1").current_variant_id == ladder[0])

    budget = PROFILE_FIELDS["latency_budget_ms"]
    for seq in range(3):
        sample = make_sample(seq=seq, variant_id=ladder[0], latency_p95_ms=budget * 2)
        stream.send(fleet_pb2.AgentMessage(telemetry=sample))
    step_down = next(stream.responses).command
    stream.close()

    assert step_down.deploy.manifest.variant_id == ladder[1]
    events = controller.registry.list_events(device_id="dev-1", kinds=[EventKind.STEPPED_DOWN])
    assert len(events) == 1
    assert events[0].from_variant == ladder[0]
    assert events[0].to_variant == ladder[1]
    assert len(events[0].details["telemetry"]) == 3


def test_shutdown_ends_open_sessions(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller, profile: DeviceProfile
) -> None:
    _register(stub, profile)
    stream = AgentStream(stub)
    stream.hello("dev-1")
    wait_for(lambda: controller.sessions.is_connected("dev-1"))

    controller.shutdown(grace_s=2.0)
    try:
        leftover = list(stream.responses)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        leftover = []
    stream.close()

    assert leftover == []
    assert controller.state.value == "stopped"


# -- DownloadArtifact --------------------------------------------------------------------


@pytest.fixture
def large_artifact(controller: Controller) -> tuple[str, bytes]:
    data = os.urandom(50 * 1024 * 1024)
    info = controller.artifacts.put_bytes(data)
    return info.sha256, data


def _download(
    stub: fleet_pb2_grpc.FleetServiceStub, sha256: str, *, offset: int = 0, chunk_size: int = 0
) -> list[fleet_pb2.ArtifactChunk]:
    request = fleet_pb2.ArtifactRequest(
        device_id="dev-1", sha256=sha256, offset=offset, chunk_size=chunk_size
    )
    return list(stub.DownloadArtifact(request, timeout=60))


def test_large_artifact_downloads_in_chunks(
    stub: fleet_pb2_grpc.FleetServiceStub,
    profile: DeviceProfile,
    large_artifact: tuple[str, bytes],
) -> None:
    sha256, data = large_artifact
    _register(stub, profile)

    chunks = _download(stub, sha256, chunk_size=8 * ARTIFACT_CHUNK_BYTES)
    body = b"".join(chunk.data for chunk in chunks)

    assert len(chunks) == 50
    assert all(len(chunk.data) <= ARTIFACT_CHUNK_BYTES for chunk in chunks)
    assert [chunk.offset for chunk in chunks] == [i * ARTIFACT_CHUNK_BYTES for i in range(50)]
    assert {chunk.total_size for chunk in chunks} == {len(data)}
    assert hashlib.sha256(body).hexdigest() == sha256


def test_artifact_download_resumes_from_offset(
    stub: fleet_pb2_grpc.FleetServiceStub,
    profile: DeviceProfile,
    large_artifact: tuple[str, bytes],
) -> None:
    sha256, data = large_artifact
    _register(stub, profile)
    offset = 20 * 1024 * 1024 + 123

    chunks = _download(stub, sha256, offset=offset)
    at_end = _download(stub, sha256, offset=len(data))

    assert chunks[0].offset == offset
    assert b"".join(chunk.data for chunk in chunks) == data[offset:]
    assert len(at_end) == 1
    assert at_end[0].data == b""
    assert at_end[0].total_size == len(data)


@pytest.mark.parametrize(
    ("sha256", "offset", "code", "text"),
    [
        ("0" * 64, 0, grpc.StatusCode.NOT_FOUND, "no artifact"),
        ("not-a-digest", 0, grpc.StatusCode.INVALID_ARGUMENT, "sha256"),
        (None, 10**9, grpc.StatusCode.OUT_OF_RANGE, "offset"),
    ],
)
def test_artifact_download_errors(
    stub: fleet_pb2_grpc.FleetServiceStub,
    controller: Controller,
    profile: DeviceProfile,
    sha256: str | None,
    offset: int,
    code: grpc.StatusCode,
    text: str,
) -> None:
    _register(stub, profile)
    if sha256 is None:
        sha256 = controller.artifacts.put_bytes(b"small artifact").sha256

    with pytest.raises(grpc.RpcError) as raised:
        _download(stub, sha256, offset=offset)

    assert raised.value.code() is code
    assert text in raised.value.details()


def test_artifact_download_by_unregistered_device_rejected(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller
) -> None:
    sha256 = controller.artifacts.put_bytes(b"small artifact").sha256

    with pytest.raises(grpc.RpcError) as raised:
        _download(stub, sha256)

    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_second_server_on_same_port_fails(grpc_port: int, tmp_path) -> None:
    other = Controller(data_dir=tmp_path / "other")
    other.start()
    try:
        with pytest.raises(OSError, match=str(grpc_port)):
            other.serve_grpc(host="127.0.0.1", port=grpc_port)
    finally:
        other.shutdown(grace_s=0)


def test_receipts_cover_stored_samples_in_few_acks(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller, profile: DeviceProfile
) -> None:
    _, ladder = store_fake_ladder(controller, profile)
    _register(stub, profile)
    assert controller.wait_until_idle(10)
    stream = AgentStream(stub)
    stream.hello("dev-1")
    next(stream.responses)  # the initial deployment

    for seq in range(1, 21):
        stream.send(fleet_pb2.AgentMessage(telemetry=make_sample(seq=seq)))
    wait_for(lambda: controller.registry.count_telemetry("dev-1") == 20)
    time.sleep(RECEIPT_INTERVAL_S + 1.0)
    controller.deploy("dev-1", ladder[1], reason="test")
    next(stream.responses)
    stream.close()

    # One receipt covers every sample up to its seq, so 20 samples need far fewer.
    assert stream.receipts[-1] == 20
    assert len(stream.receipts) < 20
    assert stream.receipts == sorted(stream.receipts)


def test_receipts_sent_before_shutdown(
    stub: fleet_pb2_grpc.FleetServiceStub, controller: Controller, profile: DeviceProfile
) -> None:
    _register(stub, profile)
    stream = AgentStream(stub)
    stream.hello("dev-1")
    wait_for(lambda: controller.sessions.is_connected("dev-1"))
    stream.send(fleet_pb2.AgentMessage(telemetry=make_sample(seq=41)))
    wait_for(lambda: controller.registry.count_telemetry("dev-1") == 1)

    controller.shutdown(grace_s=2.0)
    # The server ends the stream when it stops, so this loop ends.
    commands = list(stream.responses)

    # Sent when the server stopped, not a receipt interval later, so the agent does not
    # send the stored sample again after it reconnects.
    assert stream.receipts == [41]
    assert commands == []
