"""Helpers for the trust tests: enrolling devices and opening mutual-TLS channels."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.agent.enroll import enroll
from edgefleet.agent.identity import CONTROLLER_SERVER_NAME, DeviceIdentity
from edgefleet.controller.service import Controller
from edgefleet.protos.limits import CHANNEL_OPTIONS


def enroll_device(controller: Controller, device_id: str, state_dir: Path) -> DeviceIdentity:
    """Create a token and enroll ``device_id`` into ``state_dir`` through the real port."""
    token = controller.create_enrollment_token(ttl=timedelta(minutes=5))
    return enroll(
        f"127.0.0.1:{controller.enroll_port}",
        token=token.token,
        device_id=device_id,
        state_dir=state_dir,
    )


def identity_channel(port: int, identity: DeviceIdentity) -> grpc.Channel:
    """A mutual-TLS channel to the fleet port presenting ``identity``'s certificate."""
    return grpc.secure_channel(
        f"127.0.0.1:{port}",
        identity.grpc_credentials(),
        options=[*CHANNEL_OPTIONS, *identity.channel_options()],
    )


def server_only_channel(port: int, server_pem: bytes) -> grpc.Channel:
    """A TLS channel that trusts the controller but presents no client certificate."""
    return grpc.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(root_certificates=server_pem),
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", CONTROLLER_SERVER_NAME)],
    )


def foreign_client_channel(port: int, server_pem: bytes, device_id: str) -> grpc.Channel:
    """A TLS channel with a certificate for ``device_id`` from a CA the controller never saw."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor CA")])
    now = dt.datetime.now(dt.UTC)
    device_key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .issuer_name(ca_name)
        .public_key(device_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = device_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return grpc.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(
            root_certificates=server_pem,
            private_key=key_pem,
            certificate_chain=certificate.public_bytes(serialization.Encoding.PEM),
        ),
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", CONTROLLER_SERVER_NAME)],
    )
