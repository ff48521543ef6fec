"""Trust over real gRPC on loopback with real certificates: enrollment, mutual TLS,
device binding, revocation and signed manifests."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from controller_support import AgentStream, store_fake_ladder, wait_for
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID
from security_support import (
    enroll_device,
    foreign_client_channel,
    identity_channel,
    server_only_channel,
)
from typer.testing import CliRunner

from edgefleet.agent.enroll import EnrollmentFailed, enroll
from edgefleet.agent.identity import DeviceIdentity
from edgefleet.agent.trust import (
    ManifestRejected,
    RejectReason,
    load_trusted_keys,
    verify_manifest,
)
from edgefleet.controller.cli import app as controller_cli
from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.models import EnrollmentTokenRow, EventKind
from edgefleet.controller.policy import PolicyConfig
from edgefleet.controller.service import Controller
from edgefleet.errors import InvalidInputError
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

MANIFEST_TTL_S = 120.0


@pytest.fixture
def controller_config() -> ControllerConfig:
    return ControllerConfig(
        host_calibration_duration_s=0.2,
        shutdown_grace_s=1.0,
        manifest_ttl_s=MANIFEST_TTL_S,
        revocation_check_interval_s=0.2,
        policy=PolicyConfig(breach_samples=3, headroom_samples=5, cooldown_s=0.0),
    )


@pytest.fixture
def fleet_port(controller: Controller) -> int:
    return controller.serve_grpc(host="127.0.0.1", port=0, tls=True, enroll_port=0)


@pytest.fixture
def device_a(controller: Controller, fleet_port: int, tmp_path: Path) -> DeviceIdentity:
    return enroll_device(controller, "dev-a", tmp_path / "dev-a")


@pytest.fixture
def device_b(controller: Controller, fleet_port: int, tmp_path: Path) -> DeviceIdentity:
    return enroll_device(controller, "dev-b", tmp_path / "dev-b")


@pytest.fixture
def stub_a(fleet_port: int, device_a: DeviceIdentity) -> Iterator[fleet_pb2_grpc.FleetServiceStub]:
    with identity_channel(fleet_port, device_a) as channel:
        yield fleet_pb2_grpc.FleetServiceStub(channel)


def _register(stub, profile: DeviceProfile, device_id: str) -> fleet_pb2.RegisterResponse:
    return stub.Register(
        fleet_pb2.RegisterRequest(device_id=device_id, profile=profile.to_proto()), timeout=10
    )


def _denied_reasons(controller: Controller, device_id: str) -> list[str]:
    events = controller.registry.list_events(device_id=device_id, kinds=[EventKind.ACCESS_DENIED])
    return [event.reason for event in events]


# -- enrollment ---------------------------------------------------------------------------


def test_enrollment_stores_identity(controller: Controller, device_a: DeviceIdentity) -> None:
    trust_dir = device_a.directory
    certificate = x509.load_pem_x509_certificate((trust_dir / "device.crt").read_bytes())
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    assert common_name == "dev-a"
    assert stat.S_IMODE((trust_dir / "device.key").stat().st_mode) == 0o600
    assert list(load_trusted_keys(trust_dir.parent)) == [controller.trust.signer.key_id]
    assert device_a.controller_time_ms > 0
    controller_trust = controller.data_dir / "trust"
    for name in ("ca.key", "server.key", "manifest-signing.key"):
        assert stat.S_IMODE((controller_trust / name).stat().st_mode) == 0o600, name
    kinds = [event.kind for event in controller.registry.list_events(device_id="dev-a")]
    assert EventKind.ENROLLED in kinds


def test_enroll_force_replaces_damaged_key(
    controller: Controller, device_a: DeviceIdentity
) -> None:
    key_path = device_a.directory / "device.key"
    key_path.write_bytes(key_path.read_bytes()[:50])
    state_dir = device_a.directory.parent
    with pytest.raises(InvalidInputError, match="edgefleet enroll --force"):
        DeviceIdentity.load(state_dir)
    token = controller.create_enrollment_token(ttl=timedelta(minutes=5))

    renewed = enroll(
        f"127.0.0.1:{controller.enroll_port}",
        token=token.token,
        device_id="dev-a",
        state_dir=state_dir,
        force=True,
    )

    assert DeviceIdentity.load(state_dir) == renewed


def test_token_stored_hashed(controller: Controller, fleet_port: int) -> None:
    token = controller.create_enrollment_token(ttl=timedelta(minutes=5))
    secret = token.token.split(".")[2]

    with controller.registry._database.session() as session:
        rows = list(session.scalars(sa.select(EnrollmentTokenRow)))

    assert [row.id for row in rows] == [token.token_id]
    assert secret not in rows[0].secret_sha256
    assert len(rows[0].secret_sha256) == 64


def test_token_single_use(controller: Controller, fleet_port: int, tmp_path: Path) -> None:
    token = controller.create_enrollment_token(ttl=timedelta(minutes=5))
    target = f"127.0.0.1:{controller.enroll_port}"
    enroll(target, token=token.token, device_id="dev-a", state_dir=tmp_path / "a")

    with pytest.raises(EnrollmentFailed, match="PERMISSION_DENIED"):
        enroll(target, token=token.token, device_id="dev-b", state_dir=tmp_path / "b")

    assert any("already used by device dev-a" in r for r in _denied_reasons(controller, "dev-b"))
    assert DeviceIdentity.load(tmp_path / "b") is None


def test_enroll_at_fleet_port_names_enrollment_port(
    controller: Controller, fleet_port: int, tmp_path: Path
) -> None:
    token = controller.create_enrollment_token(ttl=timedelta(minutes=5))

    with pytest.raises(EnrollmentFailed, match="enrollment port") as raised:
        enroll(f"127.0.0.1:{fleet_port}", token=token.token, device_id="dev-a", state_dir=tmp_path)

    assert "--enroll-port" in str(raised.value)
    assert DeviceIdentity.load(tmp_path) is None


def test_expired_token_rejected(controller: Controller, fleet_port: int, tmp_path: Path) -> None:
    token = controller.create_enrollment_token(ttl=timedelta(milliseconds=1))
    time.sleep(0.05)

    with pytest.raises(EnrollmentFailed, match="PERMISSION_DENIED"):
        enroll(
            f"127.0.0.1:{controller.enroll_port}",
            token=token.token,
            device_id="dev-a",
            state_dir=tmp_path,
        )

    assert any("expired" in reason for reason in _denied_reasons(controller, "dev-a"))


def test_token_bound_to_other_device_rejected(
    controller: Controller, fleet_port: int, tmp_path: Path
) -> None:
    token = controller.create_enrollment_token(ttl=timedelta(minutes=5), device_id="dev-a")

    with pytest.raises(EnrollmentFailed, match="PERMISSION_DENIED"):
        enroll(
            f"127.0.0.1:{controller.enroll_port}",
            token=token.token,
            device_id="dev-b",
            state_dir=tmp_path,
        )

    assert any("is for device dev-a" in reason for reason in _denied_reasons(controller, "dev-b"))


def test_wrong_pin_stops_before_sending_token(
    controller: Controller, fleet_port: int, tmp_path: Path
) -> None:
    token = controller.create_enrollment_token(ttl=timedelta(minutes=5))
    wrong_pin = token.token[:-43] + "A" * 43
    target = f"127.0.0.1:{controller.enroll_port}"

    with pytest.raises(EnrollmentFailed, match="token pins"):
        enroll(target, token=wrong_pin, device_id="dev-a", state_dir=tmp_path / "first")
    # The token never reached the controller, so it still works.
    enroll(target, token=token.token, device_id="dev-a", state_dir=tmp_path / "second")

    assert _denied_reasons(controller, "dev-a") == []


# -- mutual TLS and device binding ----------------------------------------------------------


def test_enrolled_device_registers(
    controller: Controller, stub_a: fleet_pb2_grpc.FleetServiceStub, profile: DeviceProfile
) -> None:
    response = _register(stub_a, profile, "dev-a")

    assert response.device_id == "dev-a"
    assert controller.registry.find_device("dev-a") is not None


@pytest.mark.parametrize("client", ["plaintext", "no-certificate", "foreign-ca"])
def test_client_without_valid_certificate_rejected(
    controller: Controller,
    fleet_port: int,
    profile: DeviceProfile,
    client: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    server_pem = controller.trust.server_certificate.pem
    if client == "plaintext":
        channel = grpc.insecure_channel(f"127.0.0.1:{fleet_port}")
    elif client == "no-certificate":
        channel = server_only_channel(fleet_port, server_pem)
    else:
        channel = foreign_client_channel(fleet_port, server_pem, "dev-a")

    with channel, pytest.raises(grpc.RpcError) as caught:
        _register(fleet_pb2_grpc.FleetServiceStub(channel), profile, "dev-a")

    # The TLS handshake fails, so no RPC reaches the controller's code; gRPC's own log
    # records the failed handshake.
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert controller.registry.find_device("dev-a") is None
    assert "Handshake failed" in capfd.readouterr().err


def test_other_devices_certificate_rejected(
    controller: Controller,
    fleet_port: int,
    device_a: DeviceIdentity,
    device_b: DeviceIdentity,
    profile: DeviceProfile,
) -> None:
    with identity_channel(fleet_port, device_b) as channel:
        stub_b = fleet_pb2_grpc.FleetServiceStub(channel)
        with pytest.raises(grpc.RpcError) as register_error:
            _register(stub_b, profile, "dev-a")
        stream = AgentStream(stub_b)
        stream.hello("dev-a")
        with pytest.raises(grpc.RpcError) as session_error:
            next(stream.responses)
        with pytest.raises(grpc.RpcError) as download_error:
            list(
                stub_b.DownloadArtifact(
                    fleet_pb2.ArtifactRequest(device_id="dev-a", sha256="ab" * 32), timeout=10
                )
            )

    for error in (register_error, session_error, download_error):
        assert error.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "belongs to device dev-b" in error.value.details()
    events = controller.registry.list_events(device_id="dev-a", kinds=[EventKind.ACCESS_DENIED])
    assert len(events) == 3
    assert {event.details["certificate_device"] for event in events} == {"dev-b"}
    assert controller.registry.find_device("dev-a") is None


def test_revoked_device_refused_and_session_closed(
    controller: Controller,
    stub_a: fleet_pb2_grpc.FleetServiceStub,
    profile: DeviceProfile,
) -> None:
    _register(stub_a, profile, "dev-a")
    stream = AgentStream(stub_a)
    stream.hello("dev-a")
    wait_for(lambda: controller.sessions.is_connected("dev-a"))
    controller.registry.update_device("dev-a", pinned=True)  # no placement traffic

    # Revoke from another "process": the CLI writes to the database only, and the
    # running controller's revocation check closes the open session.
    result = CliRunner().invoke(
        controller_cli,
        ["revoke", "dev-a", "--data-dir", str(controller.data_dir), "--reason", "lost device"],
    )
    assert result.exit_code == 0, result.output
    started = time.monotonic()
    ended = list(stream.responses)  # returns when the controller ends the stream
    closed_after_s = time.monotonic() - started

    with pytest.raises(grpc.RpcError) as caught:
        _register(stub_a, profile, "dev-a")

    assert ended == []
    assert closed_after_s < 5.0
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked (lost device)" in caught.value.details()
    kinds = [event.kind for event in controller.registry.list_events(device_id="dev-a")]
    assert EventKind.REVOKED in kinds
    assert any("revoked" in reason for reason in _denied_reasons(controller, "dev-a"))


def test_reenrollment_lifts_revocation(
    controller: Controller,
    fleet_port: int,
    device_a: DeviceIdentity,
    profile: DeviceProfile,
    tmp_path: Path,
) -> None:
    controller.revoke_device("dev-a")
    renewed = enroll_device(controller, "dev-a", tmp_path / "renewed")

    with (
        identity_channel(fleet_port, device_a) as old_channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        _register(fleet_pb2_grpc.FleetServiceStub(old_channel), profile, "dev-a")
    with identity_channel(fleet_port, renewed) as new_channel:
        response = _register(fleet_pb2_grpc.FleetServiceStub(new_channel), profile, "dev-a")

    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert response.device_id == "dev-a"


# -- signed manifests over the real session -------------------------------------------------


def _first_deploy(stub, controller: Controller, profile: DeviceProfile) -> fleet_pb2.DeployCommand:
    _register(stub, profile, "dev-a")
    assert controller.wait_until_idle(10)
    stream = AgentStream(stub)
    stream.hello("dev-a")
    command = next(stream.responses).command
    stream.close()
    return command.deploy


def _keys(identity: DeviceIdentity) -> dict[str, Ed25519PublicKey]:
    return load_trusted_keys(identity.directory.parent)


def test_deploy_command_carries_valid_signature(
    controller: Controller,
    stub_a: fleet_pb2_grpc.FleetServiceStub,
    device_a: DeviceIdentity,
    profile: DeviceProfile,
) -> None:
    _, ladder = store_fake_ladder(controller, profile)
    deploy = _first_deploy(stub_a, controller, profile)

    manifest = verify_manifest(
        deploy, _keys(device_a), now=time.time(), last_version=None, device_id="dev-a"
    )

    assert manifest.variant.variant_id == ladder[0]
    assert manifest.variant.sha256 == deploy.manifest.sha256
    assert manifest.variant.size_bytes == deploy.manifest.size_bytes
    assert manifest.deployment_id == deploy.deployment_id
    assert manifest.expires_at_ms - manifest.issued_at_ms == MANIFEST_TTL_S * 1000


def test_received_manifest_attacks_rejected(
    controller: Controller,
    stub_a: fleet_pb2_grpc.FleetServiceStub,
    device_a: DeviceIdentity,
    profile: DeviceProfile,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, ladder = store_fake_ladder(controller, profile)
    first = _first_deploy(stub_a, controller, profile)
    keys = _keys(device_a)
    accepted = verify_manifest(first, keys, now=time.time(), last_version=None, device_id="dev-a")
    second_row = controller.deploy("dev-a", ladder[1], reason="test")
    second_version = second_row.manifest_version
    assert second_version is not None and second_version > accepted.version

    unsigned = fleet_pb2.DeployCommand()
    unsigned.CopyFrom(first)
    unsigned.ClearField("signed_manifest")
    tampered = fleet_pb2.DeployCommand()
    tampered.CopyFrom(first)
    payload = fleet_pb2.ManifestPayload.FromString(tampered.signed_manifest.payload)
    payload.variant.size_bytes += 1
    tampered.signed_manifest.payload = payload.SerializeToString()
    stranger = Controller(ControllerConfig(), data_dir=tmp_path / "other-controller")
    stranger.start()
    try:
        foreign = stranger.trust.signer.sign(
            first.manifest, device_id="dev-a", deployment_id=first.deployment_id, version=2**62
        )
    finally:
        stranger.shutdown(grace_s=0)
    wrong_key = fleet_pb2.DeployCommand(
        deployment_id=first.deployment_id, manifest=first.manifest, signed_manifest=foreign
    )

    cases = [
        (unsigned, {}, RejectReason.UNSIGNED),
        (tampered, {}, RejectReason.BAD_SIGNATURE),
        (wrong_key, {}, RejectReason.UNKNOWN_KEY),
        (first, {"last_version": second_version}, RejectReason.VERSION_BACKWARDS),
        (first, {"now": time.time() + MANIFEST_TTL_S + 1}, RejectReason.EXPIRED),
    ]
    for command, overrides, reason in cases:
        arguments = {"now": time.time(), "last_version": accepted.version, **overrides}
        caplog.clear()
        with pytest.raises(ManifestRejected) as caught:
            verify_manifest(command, keys, device_id="dev-a", **arguments)  # type: ignore[arg-type]
        assert caught.value.reason is reason
        logged = [r.getMessage() for r in caplog.records if r.name == "edgefleet.agent.trust"]
        assert logged == [str(caught.value)]
        assert f"({reason.value})" in logged[0]


def test_rollback_deployment_signed_as_rollback(
    controller: Controller,
    stub_a: fleet_pb2_grpc.FleetServiceStub,
    device_a: DeviceIdentity,
    profile: DeviceProfile,
) -> None:
    model, ladder = store_fake_ladder(controller, profile)
    _register(stub_a, profile, "dev-a")
    assert controller.wait_until_idle(10)
    controller.registry.update_device("dev-a", pinned=True)
    stream = AgentStream(stub_a)
    stream.hello("dev-a")
    next(stream.responses)  # the starting rung
    device = controller.registry.get_device("dev-a")
    controller._deployer.deploy(  # type: ignore[union-attr]
        device, model_id=model.id, variant_id=ladder[1], reason="roll back", rollback=True
    )
    command = next(stream.responses).command
    stream.close()

    manifest = verify_manifest(
        command.deploy, _keys(device_a), now=time.time(), last_version=2**62, device_id="dev-a"
    )

    assert manifest.rollback
    assert manifest.variant.variant_id == ladder[1]


def test_token_from_cli_enrolls(controller: Controller, fleet_port: int, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        controller_cli,
        ["token", "create", "--data-dir", str(controller.data_dir), "--device-id", "dev-a"],
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()

    identity = enroll(
        f"127.0.0.1:{controller.enroll_port}", token=token, device_id="dev-a", state_dir=tmp_path
    )

    assert token.startswith("ef1.")
    assert identity.device_id == "dev-a"
    assert "for device dev-a only" in result.stderr


def test_revoke_unknown_device_fails(controller: Controller, fleet_port: int) -> None:
    result = CliRunner().invoke(
        controller_cli, ["revoke", "dev-z", "--data-dir", str(controller.data_dir)]
    )

    assert result.exit_code == 1
    assert "no unrevoked certificate" in result.output


def test_token_and_revoke_reject_missing_data_dir(tmp_path: Path) -> None:
    mistyped = tmp_path / "edgefleet-dta"

    token = CliRunner().invoke(controller_cli, ["token", "create", "--data-dir", str(mistyped)])
    revoke = CliRunner().invoke(controller_cli, ["revoke", "dev-a", "--data-dir", str(mistyped)])

    assert token.exit_code == 2
    assert "edgefleet-dta" in token.output
    assert "does not exist" in token.output
    assert revoke.exit_code == 2
    assert "no controller database" in revoke.output
    assert not mistyped.exists(), "nothing may be created at a mistyped path"


@pytest.mark.parametrize("ttl", ["1e9", "8761", "inf", "nan"])
def test_token_create_rejects_too_long_ttl(tmp_path: Path, ttl: str) -> None:
    result = CliRunner().invoke(
        controller_cli, ["token", "create", "--data-dir", str(tmp_path), "--ttl", ttl]
    )

    assert result.exit_code == 2, result.output
    assert "--ttl must be a positive number of hours up to 8760 (a year)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("192.0.2.10", False), ("controller.example.net", False)],
)  # fmt: skip
def test_plaintext_warning_only_off_loopback(host: str, loopback: bool) -> None:
    from edgefleet.controller.addresses import is_loopback

    assert is_loopback(host) is loopback


def test_token_on_plaintext_controller_keeps_it_plaintext(
    controller: Controller, profile: DeviceProfile
) -> None:
    port = controller.serve_grpc(host="127.0.0.1", port=0)
    token = controller.create_enrollment_token(ttl=timedelta(minutes=5))

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = _register(fleet_pb2_grpc.FleetServiceStub(channel), profile, "dev-a")

    assert token.token.startswith("ef1.")
    assert response.device_id == "dev-a"
