"""Startup failures of the agent process: each message names the real cause and its fix."""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.agent.identity import DeviceIdentity
from edgefleet.errors import InvalidInputError

DEVICE_ID = "pi-1"
PROFILE_TOML = """\
name = "test-board"
cpu_arch = "x86_64"
cpu_cores = 2
cpu_flags = ["avx2"]
memory_mb = 1024
model_memory_budget_mb = 128
latency_budget_ms = 50.0
inference_threads = 1
"""


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate_pem(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def write_identity(state_dir: Path) -> Path:
    """Write an enrolled identity with a real key and certificate; return its trust/ dir."""
    trust = state_dir / "trust"
    trust.mkdir(parents=True)
    device_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    (trust / "device.key").write_bytes(_private_pem(device_key))
    (trust / "device.crt").write_bytes(_certificate_pem(device_key, DEVICE_ID))
    (trust / "server.crt").write_bytes(_certificate_pem(server_key, "edgefleet-controller"))
    identity = {
        "device_id": DEVICE_ID,
        "server_name": "edgefleet-controller",
        "controller_time_ms": 1,
    }
    (trust / "identity.json").write_text(json.dumps(identity))
    return trust


def run_agent(tmp_path: Path, state_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "board.toml"
    profile.write_text(PROFILE_TOML)
    command = [
        sys.executable,
        "-m",
        "edgefleet.agent",
        "run",
        "--controller",
        "127.0.0.1:1",
        "--profile",
        str(profile),
        "--device-id",
        DEVICE_ID,
        "--state-dir",
        str(state_dir),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_lock_file_directory_named(tmp_path):
    state_dir = tmp_path / "state"
    (state_dir / "agent.lock").mkdir(parents=True)

    result = run_agent(tmp_path, state_dir)

    assert result.returncode == 2
    assert f"cannot open the lock file {state_dir / 'agent.lock'}" in result.stderr
    assert "it is a directory; remove it" in result.stderr
    assert "inference API" not in result.stderr


def test_taken_api_port_named(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_agent(tmp_path, tmp_path / "state", "--api-port", str(port))

    assert result.returncode == 2
    assert f"cannot bind the inference API to 127.0.0.1:{port}" in result.stderr
    assert "choose another --api-port" in result.stderr


def test_intact_identity_loads(tmp_path):
    write_identity(tmp_path)

    identity = DeviceIdentity.load(tmp_path)

    assert identity is not None
    assert identity.device_id == DEVICE_ID


def test_truncated_device_key_stops_agent(tmp_path):
    state_dir = tmp_path / "state"
    key_path = write_identity(state_dir) / "device.key"
    key_path.write_bytes(key_path.read_bytes()[:50])

    result = run_agent(tmp_path, state_dir)

    assert result.returncode == 2
    assert f"the device key {key_path} is unreadable or damaged" in result.stderr
    assert "edgefleet enroll --force" in result.stderr
    assert "security handshaker" not in result.stderr


def test_key_of_other_certificate_rejected(tmp_path):
    trust = write_identity(tmp_path)
    other = ec.generate_private_key(ec.SECP256R1())
    (trust / "device.key").write_bytes(_private_pem(other))

    with pytest.raises(InvalidInputError, match="does not match the certificate") as raised:
        DeviceIdentity.load(tmp_path)

    assert str(trust / "device.key") in str(raised.value)
    assert "enroll the device again" in str(raised.value)


def test_damaged_certificate_rejected(tmp_path):
    trust = write_identity(tmp_path)
    (trust / "device.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")

    with pytest.raises(InvalidInputError, match=r"device certificate .* is unreadable"):
        DeviceIdentity.load(tmp_path)
