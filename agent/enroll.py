"""Enrollment on the device: trade a one-time token for a certificate and trusted keys.

1. Parse the token (``ef1.<id>.<secret>.<pin>``, from ``edgefleet controller token create``).
2. Read the controller's TLS certificate from the enrollment port and check that its
   SHA-256 fingerprint is the token's pin. The secret is sent only after this check, and
   only over TLS that trusts exactly that certificate.
3. Create the device key (EC P-256) on the device and send a CSR with the token.
4. Store the returned certificate, the CA and controller certificates, the manifest signing
   keys and the controller's time (``edgefleet.agent.identity`` lists the files).

The fingerprint is taken from the certificate itself, with no chain or validity check,
because nothing is trusted yet. The pin is what makes it trustworthy, so its validity
period does not matter here. Later connections accept it from a device clock that reads
1970, because the controller's certificate is valid from the Unix epoch.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.agent.errors import AgentError
from edgefleet.agent.identity import (
    CONTROLLER_SERVER_NAME,
    TRUST_DIR,
    DeviceIdentity,
    write_private_file,
)
from edgefleet.agent.trust import write_trusted_key
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_device_id

__all__ = ["EnrollmentFailed", "enroll", "fetch_server_certificate", "split_token"]

logger = logging.getLogger(__name__)

ENROLL_TIMEOUT_S = 15.0
_TOKEN = re.compile(r"(ef1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43})\.([A-Za-z0-9_-]{43})")
_TARGET = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


class EnrollmentFailed(AgentError):
    """Enrollment did not complete: the controller rejected it or could not be trusted."""


def split_token(token: str) -> tuple[str, str]:
    """Split a token into the part sent to the controller and the server pin."""
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise InvalidInputError(
            "invalid enrollment token: expected ef1.<id>.<secret>.<pin> as printed by "
            "`edgefleet controller token create`"
        )
    return match.group(1), match.group(2)


def fetch_server_certificate(host: str, port: int, *, timeout_s: float) -> bytes:
    """Return the PEM certificate the TLS server at ``host:port`` presents, unverified."""
    context = ssl.create_default_context()
    # Verification is off because the pin is checked next; see the module docstring.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=CONTROLLER_SERVER_NAME) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise EnrollmentFailed(
            f"cannot read the TLS certificate of {host}:{port}: {exc}; check --controller "
            "names the controller's enrollment port"
        ) from exc
    if der is None:
        raise EnrollmentFailed(f"{host}:{port} presented no TLS certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode("ascii")


def _pin_of(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def enroll(
    controller: str,
    *,
    token: str,
    device_id: str,
    state_dir: str | Path,
    force: bool = False,
    timeout_s: float = ENROLL_TIMEOUT_S,
) -> DeviceIdentity:
    """Enroll this device with the controller's enrollment port ``controller`` (HOST:PORT).

    Raises ``InvalidInputError`` for a malformed argument, and ``EnrollmentFailed`` when
    the controller cannot be reached, does not match the token's pin or rejects the token.
    """
    import grpc

    from edgefleet.protos.limits import CHANNEL_OPTIONS
    from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

    validate_device_id(device_id)
    match = _TARGET.fullmatch(controller)
    if match is None:
        raise InvalidInputError(f"invalid controller address {controller!r}: expected HOST:PORT")
    host, port = match.group(1), int(match.group(2))
    secret_part, pin = split_token(token)
    state_dir = Path(state_dir)
    # With --force the old identity is not read, because a damaged one is what it replaces.
    if not force and DeviceIdentity.load(state_dir) is not None:
        raise InvalidInputError(
            f"{state_dir} already contains an enrolled identity; pass --force to replace it"
        )

    server_pem = fetch_server_certificate(host, port, timeout_s=timeout_s)
    presented = _pin_of(server_pem)
    if not hmac.compare_digest(presented, pin):
        raise EnrollmentFailed(
            f"the controller at {controller} presented a certificate with fingerprint "
            f"{presented}, but the token pins {pin}; the connection may be intercepted, or "
            "the token belongs to another controller"
        )

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    channel = grpc.secure_channel(
        controller,
        grpc.ssl_channel_credentials(root_certificates=server_pem),
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", CONTROLLER_SERVER_NAME)],
    )
    try:
        response = fleet_pb2_grpc.EnrollmentServiceStub(channel).Enroll(
            fleet_pb2.EnrollRequest(
                token=secret_part,
                device_id=device_id,
                csr_pem=csr.public_bytes(serialization.Encoding.PEM),
            ),
            timeout=timeout_s,
        )
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            # The fleet port ends this TLS handshake, because it requires a client
            # certificate that a device gets only from enrolling.
            raise EnrollmentFailed(
                f"no enrollment response from {controller} ({code}: {details}); pass the "
                "controller's enrollment port (serve --enroll-port, 50052 by default), not "
                "its fleet port"
            ) from exc
        raise EnrollmentFailed(
            f"the controller rejected the enrollment: {code}: {details}"
        ) from exc
    finally:
        channel.close()

    if response.device_id != device_id:
        raise EnrollmentFailed(
            f"the controller enrolled device {response.device_id!r}, not {device_id!r}"
        )
    # The device stores the certificate it pinned, never one it did not check.
    return _store(state_dir, key, response, server_pem)


def _store(
    state_dir: Path,
    key: ec.EllipticCurvePrivateKey,
    response,  # fleet_pb2.EnrollResponse
    server_pem: bytes,
) -> DeviceIdentity:
    directory = state_dir / TRUST_DIR
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    write_private_file(
        directory / "device.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    (directory / "device.crt").write_bytes(response.certificate_pem)
    (directory / "ca.crt").write_bytes(response.ca_certificate_pem)
    (directory / "server.crt").write_bytes(server_pem)
    for trusted in response.manifest_keys:
        write_trusted_key(state_dir, trusted.public_key)
    if response.mqtt_password:
        write_private_file(directory / "mqtt-password", response.mqtt_password.encode() + b"\n")
    identity = DeviceIdentity(
        directory=directory,
        device_id=response.device_id,
        server_name=response.server_name or CONTROLLER_SERVER_NAME,
        controller_time_ms=response.controller_time_ms,
        mqtt_username=response.mqtt_username,
    )
    identity.save()
    logger.info(
        "enrolled as %s; trusting %d manifest signing key(s)",
        response.device_id,
        len(response.manifest_keys),
    )
    return identity
