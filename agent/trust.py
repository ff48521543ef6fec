"""Signed manifests on the device: which keys the agent trusts and how it checks a manifest.

The controller signs a ``ManifestPayload`` (the variant manifest with the artifact's sha256
and size, the device id, the deployment id, a version, an expiry and a rollback flag) with
Ed25519 and sends it as a ``SignedManifest``. ``verify_manifest`` is the agent's whole
check, and ``ManifestRejected.reason`` names what failed:

- ``UNSIGNED``: the command carries no signed manifest, or an empty signature;
- ``UNKNOWN_KEY``: the key id is not among the trusted keys;
- ``BAD_SIGNATURE``: the signature does not verify over the payload. The payload was
  changed after signing, or another key signed it under a trusted key id. The two cases
  cannot be distinguished;
- ``TAMPERED``: the signature verifies, but the unsigned fields of the ``DeployCommand``
  (its deployment id or manifest copy) differ from the signed payload;
- ``MALFORMED``: the signed payload does not parse or lacks its variant;
- ``WRONG_DEVICE``: the manifest was signed for another device;
- ``VERSION_BACKWARDS``: the version is lower than the last one accepted and the manifest
  is not a signed rollback;
- ``EXPIRED``: the manifest's expiry has passed.

Trusted keys live in ``<state dir>/trust/manifest-keys/<key id>.pub`` (PEM), written at
enrollment.

A device clock may read 1970 after a power loss on a board without a battery-backed clock.
``trusted_now`` therefore never goes below the controller's time at enrollment or the
issue time of the newest manifest accepted, so such a clock cannot make an expired
manifest look fresh for longer than the real gap since that time.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from edgefleet.errors import EdgefleetError, InvalidInputError
from edgefleet.protos.v1 import fleet_pb2

__all__ = [
    "KEY_ID_HEX_DIGITS",
    "Manifest",
    "ManifestRejected",
    "RejectReason",
    "key_id_of",
    "load_trusted_keys",
    "trusted_now",
    "verify_manifest",
    "write_trusted_key",
]

logger = logging.getLogger(__name__)

KEY_ID_HEX_DIGITS = 16
_SIGNATURE_BYTES = 64
_KEYS_DIR = Path("trust") / "manifest-keys"


class RejectReason(enum.StrEnum):
    """Reason for which ``verify_manifest`` rejected a manifest; see the module docstring."""

    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    TAMPERED = "tampered"
    MALFORMED = "malformed"
    WRONG_DEVICE = "wrong_device"
    VERSION_BACKWARDS = "version_backwards"
    EXPIRED = "expired"


class ManifestRejected(EdgefleetError):
    """A manifest failed verification; ``reason`` names the failed check.

    It is fatal: the same manifest fails again on retry, so the deployment ends.
    """

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(f"manifest rejected ({reason.value}): {message}")
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class Manifest:
    """A verified manifest: the signed payload's fields and the key that signed them."""

    variant: fleet_pb2.VariantManifest
    device_id: str
    deployment_id: str
    version: int
    issued_at_ms: int
    expires_at_ms: int
    rollback: bool
    key_id: str


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """Return the key id of ``public_key``: the first hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_DIGITS]


def verify_manifest(
    signed: fleet_pb2.SignedManifest | fleet_pb2.DeployCommand,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    *,
    now: float,
    last_version: int | None,
    device_id: str | None = None,
) -> Manifest:
    """Check a signed manifest and return its verified content.

    ``signed`` is a ``SignedManifest`` or a whole ``DeployCommand``, whose unsigned fields
    are then checked against the signed payload too. ``now`` is Unix time in seconds (pass
    ``trusted_now(...)``), ``last_version`` the version of the last manifest this device
    accepted (None before the first), and ``device_id`` this device's id. Raises
    ``ManifestRejected``, and logs each rejection at WARNING for the device's audit trail.
    """
    try:
        return _verify(
            signed, trusted_keys, now=now, last_version=last_version, device_id=device_id
        )
    except ManifestRejected as exc:
        logger.warning("%s", exc)
        raise


def _verify(
    signed: fleet_pb2.SignedManifest | fleet_pb2.DeployCommand,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    *,
    now: float,
    last_version: int | None,
    device_id: str | None,
) -> Manifest:
    command = signed if isinstance(signed, fleet_pb2.DeployCommand) else None
    envelope = command.signed_manifest if command is not None else signed
    if command is not None and not command.HasField("signed_manifest"):
        raise ManifestRejected(
            RejectReason.UNSIGNED,
            f"deployment {command.deployment_id!r} carries no signed manifest",
        )
    if not envelope.signature or not envelope.key_id:
        raise ManifestRejected(RejectReason.UNSIGNED, "the manifest has no signature or key id")

    public_key = trusted_keys.get(envelope.key_id)
    if public_key is None:
        known = ", ".join(sorted(trusted_keys)) or "none"
        raise ManifestRejected(
            RejectReason.UNKNOWN_KEY,
            f"signing key {envelope.key_id!r} is not trusted (trusted keys: {known}); "
            "re-enroll the device if the controller's signing key changed",
        )
    if len(envelope.signature) != _SIGNATURE_BYTES:
        raise ManifestRejected(
            RejectReason.BAD_SIGNATURE,
            f"the signature has {len(envelope.signature)} bytes, an Ed25519 one has 64",
        )
    try:
        public_key.verify(envelope.signature, envelope.payload)
    except InvalidSignature:
        raise ManifestRejected(
            RejectReason.BAD_SIGNATURE,
            f"the signature does not verify with key {envelope.key_id}: the payload was "
            "changed after signing, or another key signed it",
        ) from None

    payload = _parse_payload(envelope.payload)
    manifest = Manifest(
        variant=payload.variant,
        device_id=payload.device_id,
        deployment_id=payload.deployment_id,
        version=payload.version,
        issued_at_ms=payload.issued_at_ms,
        expires_at_ms=payload.expires_at_ms,
        rollback=payload.rollback,
        key_id=envelope.key_id,
    )
    if command is not None:
        _check_unsigned_copy(command, manifest)
    _check_claims(manifest, now=now, last_version=last_version, device_id=device_id)
    return manifest


def _parse_payload(data: bytes) -> fleet_pb2.ManifestPayload:
    payload = fleet_pb2.ManifestPayload()
    try:
        payload.ParseFromString(data)
    except DecodeError as exc:
        raise ManifestRejected(
            RejectReason.MALFORMED, f"the signed payload does not parse: {exc}"
        ) from None
    if not payload.HasField("variant") or not payload.variant.sha256:
        raise ManifestRejected(RejectReason.MALFORMED, "the signed payload has no variant")
    if payload.expires_at_ms <= 0:
        raise ManifestRejected(RejectReason.MALFORMED, "the signed payload has no expiry")
    return payload


def _check_unsigned_copy(command: fleet_pb2.DeployCommand, manifest: Manifest) -> None:
    if command.deployment_id != manifest.deployment_id:
        raise ManifestRejected(
            RejectReason.TAMPERED,
            f"the command names deployment {command.deployment_id!r} but the signed "
            f"manifest is for {manifest.deployment_id!r}",
        )
    if command.HasField("manifest") and command.manifest != manifest.variant:
        raise ManifestRejected(
            RejectReason.TAMPERED,
            f"the command's manifest (sha256 {command.manifest.sha256}, "
            f"{command.manifest.size_bytes} bytes) differs from the signed one "
            f"(sha256 {manifest.variant.sha256}, {manifest.variant.size_bytes} bytes)",
        )


def _check_claims(
    manifest: Manifest, *, now: float, last_version: int | None, device_id: str | None
) -> None:
    if device_id is not None and manifest.device_id != device_id:
        raise ManifestRejected(
            RejectReason.WRONG_DEVICE,
            f"the manifest was signed for device {manifest.device_id!r}, not {device_id!r}",
        )
    # An equal version is the same deployment sent again (after a reconnect, say).
    if last_version is not None and manifest.version < last_version and not manifest.rollback:
        raise ManifestRejected(
            RejectReason.VERSION_BACKWARDS,
            f"version {manifest.version} is older than the last accepted version "
            f"{last_version}, and the manifest is not a signed rollback",
        )
    now_ms = int(now * 1000)
    if now_ms >= manifest.expires_at_ms:
        raise ManifestRejected(
            RejectReason.EXPIRED,
            f"the manifest expired {(now_ms - manifest.expires_at_ms) / 1000:.0f} s ago "
            f"(expiry {manifest.expires_at_ms} ms, now {now_ms} ms)",
        )


def trusted_now(clock_s: float, *, floor_ms: int) -> float:
    """Return the time to check expiry against: the device clock, never below ``floor_ms``.

    ``floor_ms`` is the latest controller time the device has seen (at enrollment, or as
    the issue time of an accepted manifest).
    """
    return max(clock_s, floor_ms / 1000)


def load_trusted_keys(state_dir: str | Path) -> dict[str, Ed25519PublicKey]:
    """Read the manifest signing keys the device trusts; an empty dict before enrollment.

    Raises ``InvalidInputError`` for a key file that is not an Ed25519 public key or whose
    name is not its key id.
    """
    directory = Path(state_dir) / _KEYS_DIR
    keys: dict[str, Ed25519PublicKey] = {}
    if not directory.is_dir():
        return keys
    for path in sorted(directory.glob("*.pub")):
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"cannot read trusted key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidInputError(f"trusted key {path} is not an Ed25519 public key")
        key_id = key_id_of(key)
        if path.stem != key_id:
            raise InvalidInputError(
                f"trusted key {path} has key id {key_id}; rename it to {key_id}.pub"
            )
        keys[key_id] = key
    return keys


def write_trusted_key(state_dir: str | Path, raw_public_key: bytes) -> str:
    """Store a raw Ed25519 public key as trusted; returns its key id."""
    try:
        key = Ed25519PublicKey.from_public_bytes(raw_public_key)
    except ValueError as exc:
        raise InvalidInputError(f"invalid Ed25519 public key: {exc}") from exc
    key_id = key_id_of(key)
    directory = Path(state_dir) / _KEYS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    temporary = directory / f".{key_id}.pub.tmp"
    temporary.write_bytes(pem)
    os.replace(temporary, directory / f"{key_id}.pub")
    return key_id
