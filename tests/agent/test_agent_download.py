from __future__ import annotations

import hashlib
import os
from pathlib import Path

import grpc
import pytest

from edgefleet.agent.download import fetch_artifact, verify_artifact
from edgefleet.agent.errors import ArtifactError, ControllerUnavailable, StorageError
from edgefleet.protos.limits import ARTIFACT_CHUNK_BYTES, CHANNEL_OPTIONS
from edgefleet.protos.v1 import fleet_pb2_grpc


@pytest.fixture
def stub(fleet):
    channel = grpc.insecure_channel(fleet.target, options=list(CHANNEL_OPTIONS))
    yield fleet_pb2_grpc.FleetServiceStub(channel)
    channel.close()


def publish(fleet, data: bytes) -> str:
    sha256 = hashlib.sha256(data).hexdigest()
    fleet.servicer.artifacts[sha256] = data
    return sha256


def download(stub, part: Path, sha256: str, size: int) -> Path:
    path = fetch_artifact(stub, part, device_id="dev-1", sha256=sha256, size_bytes=size)
    verify_artifact(path, sha256=sha256, size_bytes=size)
    return path


def test_download_50_mb_artifact_in_chunks(fleet, stub, tmp_path):
    data = os.urandom(50 * 1024 * 1024)
    sha256 = publish(fleet, data)

    path = download(stub, tmp_path / f"{sha256}.part", sha256, len(data))

    assert path.stat().st_size == len(data)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert fleet.servicer.download_requests[0].chunk_size == ARTIFACT_CHUNK_BYTES


def test_download_resumes_after_drop(fleet, stub, tmp_path):
    data = os.urandom(5 * ARTIFACT_CHUNK_BYTES + 123)
    sha256 = publish(fleet, data)
    part = tmp_path / f"{sha256}.part"
    fleet.servicer.drop_after_bytes = 2 * ARTIFACT_CHUNK_BYTES

    with pytest.raises(ControllerUnavailable, match="interrupted"):
        fetch_artifact(stub, part, device_id="dev-1", sha256=sha256, size_bytes=len(data))
    partial_size = part.stat().st_size
    download(stub, part, sha256, len(data))

    assert partial_size == 2 * ARTIFACT_CHUNK_BYTES
    assert fleet.servicer.download_requests[1].offset == partial_size
    assert part.read_bytes() == data


def test_download_resumes_from_existing_part_file(fleet, stub, tmp_path):
    data = os.urandom(3000)
    sha256 = publish(fleet, data)
    part = tmp_path / f"{sha256}.part"
    part.write_bytes(data[:1000])

    download(stub, part, sha256, len(data))

    assert fleet.servicer.download_requests[0].offset == 1000
    assert part.read_bytes() == data


def test_download_digest_mismatch_deletes_part(fleet, stub, tmp_path):
    claimed = hashlib.sha256(b"the real model").hexdigest()
    fleet.servicer.artifacts[claimed] = b"a tampered model"
    part = tmp_path / f"{claimed}.part"

    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        download(stub, part, claimed, len(b"a tampered model"))

    assert not part.exists()


def test_download_size_mismatch_rejected(fleet, stub, tmp_path):
    data = os.urandom(2048)
    sha256 = publish(fleet, data)
    part = tmp_path / f"{sha256}.part"

    with pytest.raises(ArtifactError, match="controller reports 2048 bytes"):
        fetch_artifact(stub, part, device_id="dev-1", sha256=sha256, size_bytes=4096)

    assert not part.exists()


def test_download_unknown_artifact_rejected(stub, tmp_path):
    sha256 = "0" * 64
    with pytest.raises(ArtifactError, match="NOT_FOUND"):
        fetch_artifact(stub, tmp_path / "x.part", device_id="dev-1", sha256=sha256, size_bytes=10)


def test_download_oversized_part_file_restarts(fleet, stub, tmp_path):
    data = os.urandom(1000)
    sha256 = publish(fleet, data)
    part = tmp_path / f"{sha256}.part"
    part.write_bytes(os.urandom(5000))

    download(stub, part, sha256, len(data))

    assert fleet.servicer.download_requests[0].offset == 0
    assert part.read_bytes() == data


def test_download_disk_full_raises_storage_error(fleet, stub, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full to produce ENOSPC")
    data = os.urandom(ARTIFACT_CHUNK_BYTES * 2)
    sha256 = publish(fleet, data)
    part = tmp_path / f"{sha256}.part"
    # Writes to /dev/full fail with ENOSPC, as on a full disk.
    part.symlink_to("/dev/full")

    with pytest.raises(StorageError, match="no space left on device"):
        fetch_artifact(stub, part, device_id="dev-1", sha256=sha256, size_bytes=len(data))

    assert not part.is_symlink()


def test_download_controller_down_is_transient(tmp_path):
    channel = grpc.insecure_channel("127.0.0.1:1", options=list(CHANNEL_OPTIONS))
    stub = fleet_pb2_grpc.FleetServiceStub(channel)
    with pytest.raises(ControllerUnavailable):
        fetch_artifact(stub, tmp_path / "x.part", device_id="d", sha256="1" * 64, size_bytes=10)
    channel.close()
