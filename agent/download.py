"""Resumable, verified artifact download over ``FleetService.DownloadArtifact``.

``fetch_artifact`` appends chunks to ``downloads/<sha256>.part`` starting from the part
file's current size, so a transfer cut by a network drop resumes where it stopped.
``verify_artifact`` then checks the size and sha256 and deletes a part file that fails,
because its bytes can never become valid by resuming.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import zlib
from pathlib import Path

import grpc

from edgefleet.agent.errors import (
    ArtifactError,
    ControllerUnavailable,
    CorruptArtifactError,
    StorageError,
)
from edgefleet.agent.transport import TRANSIENT_CODES
from edgefleet.protos.limits import ARTIFACT_CHUNK_BYTES
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

__all__ = [
    "check_chunk",
    "fetch_artifact",
    "resume_offset",
    "verify_artifact",
    "write_failure",
]

logger = logging.getLogger(__name__)

_HASH_BLOCK_BYTES = 1 << 20


def fetch_artifact(
    stub: fleet_pb2_grpc.FleetServiceStub,
    part_path: Path,
    *,
    device_id: str,
    sha256: str,
    size_bytes: int,
    timeout_s: float | None = None,
) -> Path:
    """Download the artifact ``sha256`` into ``part_path``, resuming from its size.

    Raises ``ControllerUnavailable`` when the transfer drops, and keeps the part file for the
    next attempt. Raises ``ArtifactError`` when the controller does not have the artifact or
    sends inconsistent chunks. Raises ``StorageError`` when the disk is full, after deleting
    the part file to give the space back.
    """
    offset = resume_offset(part_path, size_bytes)
    if offset == size_bytes:
        return part_path

    request = fleet_pb2.ArtifactRequest(
        device_id=device_id, sha256=sha256, offset=offset, chunk_size=ARTIFACT_CHUNK_BYTES
    )
    if offset:
        logger.info("resuming download of %s at byte %d of %d", sha256, offset, size_bytes)
    try:
        with part_path.open("ab") as handle:
            for chunk in stub.DownloadArtifact(request, timeout=timeout_s):
                check_chunk(chunk, part_path, sha256=sha256, offset=offset, size=size_bytes)
                handle.write(chunk.data)
                offset += len(chunk.data)
            handle.flush()
            os.fsync(handle.fileno())
    except grpc.RpcError as exc:
        raise _translate_rpc_error(exc, part_path, sha256) from exc
    except OSError as exc:
        raise write_failure(exc, part_path, sha256=sha256, size_bytes=size_bytes) from exc

    if offset != size_bytes:
        raise ControllerUnavailable(
            f"download of {sha256} ended at byte {offset} of {size_bytes}; it resumes there"
        )
    return part_path


def write_failure(exc: OSError, part_path: Path, *, sha256: str, size_bytes: int) -> StorageError:
    """Delete the part file to give its space back and describe the failed write."""
    part_path.unlink(missing_ok=True)
    if exc.errno == errno.ENOSPC:
        return StorageError(
            f"no space left on device while downloading {sha256} ({size_bytes} bytes) to "
            f"{part_path.parent}; the partial file was deleted"
        )
    return StorageError(f"cannot write {part_path}: {exc}")


def verify_artifact(part_path: Path, *, sha256: str, size_bytes: int) -> None:
    """Check the size and sha256 of a downloaded file; delete it and raise ``ArtifactError``."""
    try:
        actual_size = part_path.stat().st_size
    except FileNotFoundError:
        raise ArtifactError(f"downloaded artifact {sha256} is missing: {part_path}") from None
    if actual_size != size_bytes:
        part_path.unlink(missing_ok=True)
        raise CorruptArtifactError(
            f"size mismatch for artifact {sha256}: expected {size_bytes} bytes, got {actual_size}"
        )
    digest = hashlib.sha256()
    with part_path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    if digest.hexdigest() != sha256:
        part_path.unlink(missing_ok=True)
        raise CorruptArtifactError(
            f"sha256 mismatch for artifact: expected {sha256}, got {digest.hexdigest()}"
        )


def resume_offset(part_path: Path, size_bytes: int) -> int:
    """Return the size of ``part_path``, deleting it when it exceeds ``size_bytes``."""
    try:
        offset = part_path.stat().st_size
    except FileNotFoundError:
        return 0
    if offset > size_bytes:
        # Longer than the artifact: left over from a different transfer, start again.
        logger.warning(
            "discarding %s: its %d bytes exceed the artifact size %d", part_path, offset, size_bytes
        )
        part_path.unlink()
        return 0
    return offset


def check_chunk(
    chunk: fleet_pb2.ArtifactChunk, part_path: Path, *, sha256: str, offset: int, size: int
) -> None:
    """Raise ``ArtifactError`` and delete the part file when ``chunk`` does not fit it."""
    problem = None
    if chunk.sha256 != sha256:
        problem = f"chunk names artifact {chunk.sha256!r}"
    elif chunk.total_size != size:
        problem = f"controller reports {chunk.total_size} bytes, the manifest {size}"
    elif chunk.offset != offset:
        problem = f"chunk starts at byte {chunk.offset}, expected {offset}"
    elif offset + len(chunk.data) > size:
        problem = f"chunk at byte {offset} runs past the artifact size {size}"
    elif chunk.HasField("crc32") and zlib.crc32(chunk.data) != chunk.crc32:
        problem = f"chunk at byte {offset} fails its CRC-32 check"
    if problem is None:
        return
    part_path.unlink(missing_ok=True)
    raise CorruptArtifactError(f"invalid chunk while downloading {sha256}: {problem}")


def _translate_rpc_error(exc: grpc.RpcError, part_path: Path, sha256: str) -> Exception:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code in TRANSIENT_CODES:
        return ControllerUnavailable(f"download of {sha256} interrupted: {code.name}: {details}")
    if code == grpc.StatusCode.OUT_OF_RANGE:
        part_path.unlink(missing_ok=True)
    name = code.name if code is not None else "UNKNOWN"
    return ArtifactError(f"controller rejected the download of {sha256}: {name}: {details}")
