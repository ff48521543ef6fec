"""verify_manifest: every rejection reason, rollbacks, the clock floor and trusted key files."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.agent.trust import (
    ManifestRejected,
    RejectReason,
    key_id_of,
    load_trusted_keys,
    trusted_now,
    verify_manifest,
    write_trusted_key,
)
from edgefleet.controller.signing import ManifestSigner
from edgefleet.errors import EdgefleetError, InvalidInputError
from edgefleet.protos.v1 import fleet_pb2

NOW = 1_800_000_000.0
VARIANT = fleet_pb2.VariantManifest(
    variant_id="v1", model_id="m", sha256="ab" * 32, size_bytes=1234, opset=17
)


@pytest.fixture
def signer(tmp_path: Path) -> ManifestSigner:
    directory = tmp_path / "trust"
    directory.mkdir()
    return ManifestSigner(directory, ttl_s=3600.0)


@pytest.fixture
def keys(signer: ManifestSigner) -> dict[str, Ed25519PublicKey]:
    key = Ed25519PublicKey.from_public_bytes(signer.trusted_key.public_key)
    return {key_id_of(key): key}


def _command(signer: ManifestSigner, **overrides: object) -> fleet_pb2.DeployCommand:
    fields: dict[str, object] = {
        "device_id": "dev-1",
        "deployment_id": "d1",
        "version": 10,
        "rollback": False,
        "now": NOW,
    }
    fields.update(overrides)
    signed = signer.sign(VARIANT, **fields)  # type: ignore[arg-type]
    return fleet_pb2.DeployCommand(
        deployment_id=str(fields["deployment_id"]), manifest=VARIANT, signed_manifest=signed
    )


def _reject(command, keys, *, now=NOW, last_version=None, device_id="dev-1") -> RejectReason:
    with pytest.raises(ManifestRejected) as caught:
        verify_manifest(command, keys, now=now, last_version=last_version, device_id=device_id)
    return caught.value.reason


def test_valid_manifest_returns_signed_fields(signer, keys) -> None:
    manifest = verify_manifest(
        _command(signer), keys, now=NOW + 1, last_version=9, device_id="dev-1"
    )

    assert manifest.variant == VARIANT
    assert manifest.variant.sha256 == "ab" * 32
    assert manifest.variant.size_bytes == 1234
    assert manifest.version == 10
    assert manifest.key_id == signer.key_id
    assert manifest.expires_at_ms == int(NOW * 1000) + 3_600_000


def test_signed_manifest_alone_verifies(signer, keys) -> None:
    signed = _command(signer).signed_manifest

    manifest = verify_manifest(signed, keys, now=NOW, last_version=None)

    assert manifest.deployment_id == "d1"


def test_unsigned_command_rejected(signer, keys) -> None:
    command = fleet_pb2.DeployCommand(deployment_id="d1", manifest=VARIANT)

    assert _reject(command, keys) is RejectReason.UNSIGNED


def test_empty_signature_rejected(signer, keys) -> None:
    command = _command(signer)
    command.signed_manifest.signature = b""

    assert _reject(command, keys) is RejectReason.UNSIGNED


def test_unknown_key_rejected(tmp_path: Path, keys) -> None:
    (tmp_path / "other").mkdir()
    stranger = ManifestSigner(tmp_path / "other", ttl_s=3600.0)

    assert _reject(_command(stranger), keys) is RejectReason.UNKNOWN_KEY


def test_wrong_key_under_trusted_id_rejected(tmp_path: Path, signer, keys) -> None:
    (tmp_path / "other").mkdir()
    forger = ManifestSigner(tmp_path / "other", ttl_s=3600.0)
    command = _command(forger)
    command.signed_manifest.key_id = signer.key_id

    assert _reject(command, keys) is RejectReason.BAD_SIGNATURE


def test_changed_payload_rejected(signer, keys) -> None:
    command = _command(signer)
    payload = fleet_pb2.ManifestPayload.FromString(command.signed_manifest.payload)
    payload.variant.sha256 = "cd" * 32
    command.signed_manifest.payload = payload.SerializeToString()

    assert _reject(command, keys) is RejectReason.BAD_SIGNATURE


def test_flipped_payload_byte_rejected(signer, keys) -> None:
    command = _command(signer)
    payload = bytearray(command.signed_manifest.payload)
    payload[-1] ^= 0x01
    command.signed_manifest.payload = bytes(payload)

    assert _reject(command, keys) is RejectReason.BAD_SIGNATURE


def test_tampered_unsigned_copy_rejected(signer, keys) -> None:
    command = _command(signer)
    command.manifest.sha256 = "cd" * 32

    assert _reject(command, keys) is RejectReason.TAMPERED


def test_tampered_deployment_id_rejected(signer, keys) -> None:
    command = _command(signer)
    command.deployment_id = "d2"

    assert _reject(command, keys) is RejectReason.TAMPERED


def test_manifest_for_other_device_rejected(signer, keys) -> None:
    assert _reject(_command(signer, device_id="dev-2"), keys) is RejectReason.WRONG_DEVICE


def test_older_version_rejected(signer, keys) -> None:
    reason = _reject(_command(signer, version=9), keys, last_version=10)

    assert reason is RejectReason.VERSION_BACKWARDS


def test_same_version_accepted_again(signer, keys) -> None:
    manifest = verify_manifest(
        _command(signer, version=10), keys, now=NOW, last_version=10, device_id="dev-1"
    )

    assert manifest.version == 10


def test_signed_rollback_may_go_back(signer, keys) -> None:
    manifest = verify_manifest(
        _command(signer, version=5, rollback=True), keys, now=NOW, last_version=10
    )

    assert manifest.rollback
    assert manifest.version == 5


def test_expired_manifest_rejected(signer, keys) -> None:
    assert _reject(_command(signer), keys, now=NOW + 3600) is RejectReason.EXPIRED


def test_clock_at_1970_uses_controller_time_floor(signer, keys) -> None:
    command = _command(signer)
    floor_ms = int((NOW + 7200) * 1000)  # the controller was seen two hours after signing

    fresh_clock = trusted_now(0.0, floor_ms=int(NOW * 1000))
    stale_clock = trusted_now(0.0, floor_ms=floor_ms)

    assert verify_manifest(command, keys, now=fresh_clock, last_version=None).version == 10
    assert _reject(command, keys, now=stale_clock) is RejectReason.EXPIRED


def test_garbage_payload_rejected(signer, keys) -> None:
    command = _command(signer)
    private = signer._key  # the controller's key, to sign a payload that is not a manifest
    command.signed_manifest.payload = b"\xff\xff\xff"
    command.signed_manifest.signature = private.sign(b"\xff\xff\xff")

    assert _reject(command, keys) is RejectReason.MALFORMED


def test_rejection_logged_with_reason(signer, keys, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="edgefleet.agent.trust")

    _reject(_command(signer, version=1), keys, last_version=2)

    assert any("version_backwards" in record.getMessage() for record in caplog.records)


def test_rejection_is_edgefleet_error(signer, keys) -> None:
    with pytest.raises(EdgefleetError, match="unsigned"):
        verify_manifest(fleet_pb2.DeployCommand(), keys, now=NOW, last_version=None)


def test_signing_key_created_private_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "trust"
    directory.mkdir()

    first = ManifestSigner(directory, ttl_s=60.0)
    second = ManifestSigner(directory, ttl_s=60.0)

    key_mode = stat.S_IMODE((directory / "manifest-signing.key").stat().st_mode)
    assert key_mode == 0o600
    assert first.key_id == second.key_id
    exported = serialization.load_pem_public_key((directory / "manifest-signing.pub").read_bytes())
    assert key_id_of(exported) == first.key_id  # type: ignore[arg-type]


def test_trusted_keys_round_trip(tmp_path: Path, signer) -> None:
    key_id = write_trusted_key(tmp_path, signer.trusted_key.public_key)

    keys = load_trusted_keys(tmp_path)

    assert list(keys) == [key_id] == [signer.key_id]


def test_trusted_key_with_wrong_name_rejected(tmp_path: Path, signer) -> None:
    key_id = write_trusted_key(tmp_path, signer.trusted_key.public_key)
    directory = tmp_path / "trust" / "manifest-keys"
    (directory / f"{key_id}.pub").rename(directory / "0000000000000000.pub")

    with pytest.raises(InvalidInputError, match=f"rename it to {key_id}.pub"):
        load_trusted_keys(tmp_path)


def test_no_trusted_keys_before_enrollment(tmp_path: Path) -> None:
    assert load_trusted_keys(tmp_path) == {}
