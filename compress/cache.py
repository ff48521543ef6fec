"""Content-addressed cache of compressed ONNX artifacts.

An entry is keyed by the digest of the source model, the dataset and the recipe (prefix)
that produced it. Only latency and memory depend on the profile, and those are measured
per plan, so a second plan for another profile reuses every artifact. Layout::

    <root>/<key[:2]>/<key>/model.onnx
    <root>/<key[:2]>/<key>/meta.json     sha256 of model.onnx, accuracy, verification, details
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["ArtifactCache", "CachedArtifact", "cache_key", "file_sha256"]

logger = logging.getLogger(__name__)

# Bump when the meaning of cached files changes, so stale entries are never reused.
CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class CachedArtifact:
    """An ONNX file in the cache and the metadata stored with it."""

    path: Path
    sha256: str
    meta: dict[str, Any]


def file_sha256(path: str | Path) -> str:
    """Return the hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(**parts: str | int) -> str:
    """Return the SHA-256 of the canonical JSON of ``parts`` plus the cache format."""
    document = json.dumps({**parts, "cache_format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(document.encode()).hexdigest()


class ArtifactCache:
    """Directory of ONNX artifacts keyed by ``cache_key``; safe against partial writes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def get(self, key: str) -> CachedArtifact | None:
        """Return the entry for ``key``, or None when it is missing or corrupt."""
        entry = self._entry(key)
        model, meta_file = entry / "model.onnx", entry / "meta.json"
        if not model.is_file() or not meta_file.is_file():
            return None
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("discarding cache entry %s: unreadable meta.json: %s", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        digest = file_sha256(model)
        if digest != meta.get("sha256"):
            logger.warning(
                "discarding cache entry %s: model.onnx sha256 %s does not match the recorded %s",
                entry,
                digest,
                meta.get("sha256"),
            )
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return CachedArtifact(path=model, sha256=digest, meta=meta)

    def put(self, key: str, model: Path, meta: dict[str, Any]) -> CachedArtifact:
        """Copy ``model`` into the cache with ``meta``; the entry appears atomically."""
        entry = self._entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        digest = file_sha256(model)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=entry.parent))
        shutil.copyfile(model, staging / "model.onnx")
        (staging / "meta.json").write_text(
            json.dumps({**meta, "sha256": digest}, indent=2, sort_keys=True), encoding="utf-8"
        )
        try:
            os.replace(staging, entry)
        except OSError:
            # Another process stored the same key first; its entry is equivalent.
            shutil.rmtree(staging, ignore_errors=True)
        cached = self.get(key)
        if cached is None:
            raise OSError(f"cache entry {entry} vanished right after it was written")
        return cached

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / key
