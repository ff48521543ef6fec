"""The device's identity after enrollment: its key, certificate and what it trusts.

Enrollment (``edgefleet.agent.enroll``) writes these files into ``<state dir>/trust/``::

    device.key          the device's private key (PEM, mode 0600); it never leaves the device
    device.crt          the device certificate the controller's CA issued (PEM)
    ca.crt              the controller's device CA certificate (PEM)
    server.crt          the controller's TLS certificate, the only one the device trusts
    identity.json       device id, server name, controller time at enrollment, MQTT user
    mqtt-password       broker password (mode 0600), when the controller manages the broker
    manifest-keys/      trusted manifest signing keys (see ``edgefleet.agent.trust``)

An agent whose state directory has ``identity.json`` connects with mutual TLS; one without
it connects in plaintext, which is meant for loopback use.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from edgefleet.errors import InvalidInputError

__all__ = ["CONTROLLER_SERVER_NAME", "TRUST_DIR", "DeviceIdentity", "write_private_file"]

TRUST_DIR = "trust"
# Name in the controller's TLS certificate, which agents verify it against.
CONTROLLER_SERVER_NAME = "edgefleet-controller"
_IDENTITY_FILE = "identity.json"


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (mode 0600), atomically.

    The temporary file is created with mode 0600, so the secret is never readable by
    others, not even briefly.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """The enrolled identity in one state directory."""

    directory: Path
    device_id: str
    server_name: str
    controller_time_ms: int
    mqtt_username: str = ""

    @classmethod
    def load(cls, state_dir: str | Path) -> DeviceIdentity | None:
        """Read the identity of ``state_dir``; None when the device has not enrolled.

        Raises ``InvalidInputError`` when the identity files are incomplete or unreadable.
        """
        directory = Path(state_dir) / TRUST_DIR
        path = directory / _IDENTITY_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            identity = cls(
                directory=directory,
                device_id=str(data["device_id"]),
                server_name=str(data["server_name"]),
                controller_time_ms=int(data["controller_time_ms"]),
                mqtt_username=str(data.get("mqtt_username", "")),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(
                f"cannot read the device identity {path}: {exc}; enroll the device again"
            ) from exc
        for name in ("device.key", "device.crt", "server.crt"):
            if not (directory / name).is_file():
                raise InvalidInputError(
                    f"the device identity in {directory} lacks {name}; enroll the device again"
                )
        _check_key_pair(directory / "device.key", directory / "device.crt")
        return identity

    def save(self) -> None:
        data = {
            "device_id": self.device_id,
            "server_name": self.server_name,
            "controller_time_ms": self.controller_time_ms,
            "mqtt_username": self.mqtt_username,
        }
        temporary = self.directory / f".{_IDENTITY_FILE}.tmp"
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self.directory / _IDENTITY_FILE)

    @property
    def mqtt_password(self) -> str | None:
        path = self.directory / "mqtt-password"
        if not path.is_file():
            return None
        return path.read_text(encoding="utf-8").strip()

    def grpc_credentials(self):  # -> grpc.ChannelCredentials
        """Return mutual-TLS channel credentials that trust only the controller's certificate."""
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=(self.directory / "server.crt").read_bytes(),
            private_key=(self.directory / "device.key").read_bytes(),
            certificate_chain=(self.directory / "device.crt").read_bytes(),
        )

    def channel_options(self) -> list[tuple[str, str]]:
        # The device reaches the controller by whatever address its network gives it. The
        # certificate was pinned at enrollment, so gRPC checks it against the name the
        # controller put in it rather than against that address.
        return [("grpc.ssl_target_name_override", self.server_name)]


def _check_key_pair(key_path: Path, certificate_path: Path) -> None:
    """Raise ``InvalidInputError`` unless the private key parses and matches the certificate.

    gRPC reports a damaged key only as "Failed to create security handshaker" on every
    connection attempt, so the agent checks the pair once at start instead.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    again = (
        "enroll the device again with a new token: edgefleet enroll --force --controller "
        "HOST:PORT --token TOKEN --device-id ID --state-dir DIR"
    )
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"the device key {key_path} is unreadable or damaged ({exc}); {again}"
        ) from exc
    try:
        certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"the device certificate {certificate_path} is unreadable or damaged ({exc}); {again}"
        ) from exc
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise InvalidInputError(
            f"the device key {key_path} does not match the certificate {certificate_path}; {again}"
        )
