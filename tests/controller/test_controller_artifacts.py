from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgefleet.controller.artifacts import ArtifactStore
from edgefleet.controller.errors import (
    ArtifactDigestError,
    ArtifactNotFoundError,
    ArtifactRangeError,
)


def test_put_stores_under_content_address(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    source = tmp_path / "model.onnx"
    source.write_bytes(b"onnx bytes")
    sha256 = hashlib.sha256(b"onnx bytes").hexdigest()

    info = store.put_file(source, expected_sha256=sha256)

    assert info.path == tmp_path / "store" / sha256[:2] / f"{sha256}.onnx"
    assert info.path.read_bytes() == b"onnx bytes"
    assert info.size_bytes == 10
    assert store.verify(sha256)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_put_with_wrong_digest_stores_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)

    with pytest.raises(ArtifactDigestError, match="expected"):
        store.put_bytes(b"content", expected_sha256="0" * 64)

    assert not store.contains(hashlib.sha256(b"content").hexdigest())
    assert list((tmp_path / "tmp").iterdir()) == []


def test_read_chunks_from_offset(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = bytes(range(256)) * 10
    sha256 = store.put_bytes(data).sha256

    chunks = list(store.read_chunks(sha256, offset=100, chunk_size=1000))

    assert [offset for offset, _ in chunks] == [100, 1100, 2100]
    assert b"".join(chunk for _, chunk in chunks) == data[100:]


def test_read_errors(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    sha256 = store.put_bytes(b"abc").sha256

    with pytest.raises(ArtifactNotFoundError):
        store.read_chunks("1" * 64)
    with pytest.raises(ArtifactRangeError, match="offset 4"):
        store.read_chunks(sha256, offset=4)
    with pytest.raises(ValueError, match="sha256"):
        store.path("../../etc/passwd")
