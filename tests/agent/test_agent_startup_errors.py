"""Startup failures of the agent process: each message names the real cause and its fix."""

from __future__ import annotations

import datetime
import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from agent_support import build_affine_model, build_manifest, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.agent.identity import DeviceIdentity
from edgefleet.agent.store import AgentStore
from edgefleet.errors import InvalidInputError
from edgefleet.protos.v1 import fleet_pb2

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


def _can_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "true"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(
    not _can_mount_read_only(), reason="needs unshare to mount a read-only file system"
)
def test_read_only_state_dir_serves_committed_model(fleet, tmp_path):
    pristine = tmp_path / "pristine"
    data = build_affine_model(2.0, 1.0)
    manifest = build_manifest(data, scale=2.0, bias=1.0)
    store = AgentStore(pristine)
    (pristine / "staged.onnx").write_bytes(data)
    store.install(manifest, pristine / "staged.onnx")
    store.commit(manifest.sha256)
    state_dir = tmp_path / "read-only"
    state_dir.mkdir()
    profile = tmp_path / "board.toml"
    profile.write_text(PROFILE_TOML)
    port = _free_port()
    agent = [
        sys.executable,
        "-m",
        "edgefleet.agent",
        "run",
        "--controller",
        fleet.target,
        "--profile",
        str(profile),
        "--device-id",
        DEVICE_ID,
        "--state-dir",
        str(state_dir),
        "--api-port",
        str(port),
        "--telemetry-interval",
        "0.2",
    ]
    # A tmpfs copy of the state directory, remounted read-only in a private mount
    # namespace, fails writes with EROFS as a failing SD card does.
    script = (
        f"mount -t tmpfs none '{state_dir}' && cp -a '{pristine}/.' '{state_dir}/' && "
        f"mount -o remount,ro '{state_dir}' && exec \"$@\""
    )
    process = subprocess.Popen(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", *agent],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: len(fleet.servicer.of_kind("telemetry")) >= 2,
            timeout_s=30,
            description="telemetry",
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/infer",
            data=json.dumps({"inputs": {"x": [[1.0, 1.0, 1.0, 1.0]]}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            inference = json.load(response)
        newer_data = build_affine_model(3.0, 0.5)
        newer = build_manifest(newer_data, scale=3.0, bias=0.5)
        fleet.servicer.artifacts[newer.sha256] = newer_data
        deploy = fleet_pb2.DeployCommand(deployment_id="dep-1", manifest=newer)
        fleet.servicer.send(fleet_pb2.Command(command_id="cmd-1", deploy=deploy))
        wait_for(lambda: fleet.servicer.of_kind("status"), timeout_s=30, description="status")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, stderr[-3000:]
    assert fleet.servicer.registrations[0].current_variant_id == manifest.variant_id
    assert inference["variant_id"] == manifest.variant_id
    assert inference["outputs"]["y"] == [[3.0, 3.0, 3.0, 3.0]]
    [status] = fleet.servicer.of_kind("status")
    assert status.state == fleet_pb2.DEPLOYMENT_STATE_FAILED
    assert status.variant_id == newer.variant_id
    assert "read-only file system" in status.message
    assert f"keeps serving {manifest.variant_id}" in status.message
    startup_error = f"ERROR edgefleet.agent.daemon: state directory {state_dir} is on a read-only"
    assert stderr.count(startup_error) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    assert fleet.servicer.download_requests == []
