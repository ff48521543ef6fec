"""Content-addressed store of variant files.

An artifact lives at ``<root>/<sha[:2]>/<sha>.onnx``, named by the SHA-256 of its bytes.
``put_file`` and ``put_bytes`` hash while copying into a temporary file in the same
directory tree, fsync it, check the digest and rename it into place, so a reader never
sees a partial or corrupt artifact, even after a crash mid-write.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgefleet.controller.errors import (
    ArtifactDigestError,
    ArtifactNotFoundError,
    ArtifactRangeError,
)
from edgefleet.ids import validate_sha256
from edgefleet.protos.limits import ARTIFACT_CHUNK_BYTES

__all__ = ["ArtifactInfo", "ArtifactStore"]

logger = logging.getLogger(__name__)

_COPY_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    """A stored artifact: its digest, size in bytes and path."""

    sha256: str
    size_bytes: int
    path: Path


class ArtifactStore:
    """Content-addressed artifact directory; see the module docstring."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._tmp_dir = self.root / "tmp"
        self._tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Return where the artifact with ``sha256`` is (or would be) stored."""
        validate_sha256(sha256)
        return self.root / sha256[:2] / f"{sha256}.onnx"

    def contains(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def info(self, sha256: str) -> ArtifactInfo:
        """Return the stored artifact; raises ``ArtifactNotFoundError`` if it is absent."""
        path = self.path(sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"no artifact with sha256 {sha256}") from None
        return ArtifactInfo(sha256=sha256, size_bytes=size, path=path)

    def put_file(self, source: str | Path, *, expected_sha256: str | None = None) -> ArtifactInfo:
        """Copy ``source`` into the store and return it.

        Raises ``ArtifactDigestError`` when the content's digest differs from
        ``expected_sha256``; nothing is stored then.
        """
        with open(source, "rb") as stream:
            return self._put_stream(stream, expected_sha256=expected_sha256)

    def put_bytes(self, data: bytes, *, expected_sha256: str | None = None) -> ArtifactInfo:
        """Store ``data`` and return it; checks ``expected_sha256`` like ``put_file``."""
        return self._put_stream(io.BytesIO(data), expected_sha256=expected_sha256)

    def _put_stream(self, stream: BinaryIO, *, expected_sha256: str | None) -> ArtifactInfo:
        if expected_sha256 is not None:
            validate_sha256(expected_sha256)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp_dir, suffix=".part")
        tmp_path = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as tmp:
                while chunk := stream.read(_COPY_BUFFER_BYTES):
                    digest.update(chunk)
                    tmp.write(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise ArtifactDigestError(
                    f"artifact content has sha256 {sha256}, expected {expected_sha256}"
                )
            return self._commit(tmp_path, sha256)
        finally:
            tmp_path.unlink(missing_ok=True)

    def _commit(self, tmp_path: Path, sha256: str) -> ArtifactInfo:
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        # rename is atomic within one file system; an artifact that is already stored has
        # the same bytes, so replacing it is harmless.
        os.replace(tmp_path, target)
        _fsync_directory(target.parent)
        size = target.stat().st_size
        logger.info("stored artifact %s (%d bytes)", sha256, size)
        return ArtifactInfo(sha256=sha256, size_bytes=size, path=target)

    def open(self, sha256: str) -> BinaryIO:
        """Open the artifact for reading; raises ``ArtifactNotFoundError`` if it is absent."""
        try:
            return open(self.path(sha256), "rb")
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"no artifact with sha256 {sha256}") from None

    def read_chunks(
        self, sha256: str, *, offset: int = 0, chunk_size: int = ARTIFACT_CHUNK_BYTES
    ) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, data)`` chunks of at most ``chunk_size`` bytes from ``offset``.

        Raises ``ArtifactNotFoundError`` for an unknown digest and ``ArtifactRangeError``
        when ``offset`` is negative or beyond the end. Both are raised on the call, before
        the first chunk, so a server can map them to a status before streaming.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        info = self.info(sha256)
        if offset < 0 or offset > info.size_bytes:
            raise ArtifactRangeError(
                f"offset {offset} is outside artifact {sha256} of {info.size_bytes} bytes"
            )
        stream = self.open(sha256)
        return self._iter_chunks(stream, offset, chunk_size)

    @staticmethod
    def _iter_chunks(stream: BinaryIO, offset: int, chunk_size: int) -> Iterator[tuple[int, bytes]]:
        with stream:
            stream.seek(offset)
            while data := stream.read(chunk_size):
                yield offset, data
                offset += len(data)

    def verify(self, sha256: str) -> bool:
        """Rehash a stored artifact and return whether its content still matches its name."""
        digest = hashlib.sha256()
        with self.open(sha256) as stream:
            while chunk := stream.read(_COPY_BUFFER_BYTES):
                digest.update(chunk)
        return digest.hexdigest() == sha256


def _fsync_directory(path: Path) -> None:
    # Persist the rename itself; without this a power loss can leave the directory
    # entry unwritten even though the file's data is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
