"""Artifact download over MQTT: offset-addressed, CRC-checked chunks requested one by one.

The agent publishes an ``ArtifactRequest`` per chunk and keeps ``WINDOW_CHUNKS`` requests
outstanding, so a transfer runs at broker speed without queueing a whole artifact in the
broker for each device. Chunks are written in offset order to ``downloads/<sha256>.part``.
A drop ends the attempt with ``ControllerUnavailable`` and keeps the part file, so the next
attempt, on a new connection, resumes at its size. Chunks left over from an earlier attempt
(QoS 1 redelivery to the persistent session) are recognised by their offset and skipped.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from paho.mqtt.properties import Properties

from edgefleet.agent.download import check_chunk, resume_offset, write_failure
from edgefleet.agent.errors import ArtifactError, ControllerUnavailable, CorruptArtifactError
from edgefleet.protos.mqtt import reply_error
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["CHUNK_BYTES", "WINDOW_CHUNKS", "ChunkFetcher"]

logger = logging.getLogger(__name__)

# 256 KiB chunks with 4 in flight keep 1 MiB per downloading device in the broker.
CHUNK_BYTES = 256 * 1024
WINDOW_CHUNKS = 4
# A transfer with no chunk for this long is treated as dropped; it resumes on the next try.
CHUNK_TIMEOUT_S = 15.0
# Chunks failing their CRC-32 are requested again this many times before the download fails.
MAX_CRC_FAILURES = 3

_Delivery = tuple[bytes, Properties | None]


class ChunkFetcher:
    """Downloads one artifact at a time through a connection's publish function."""

    def __init__(
        self,
        *,
        publish_request: Callable[[fleet_pb2.ArtifactRequest], None],
        connection_lost: threading.Event,
        lost_message: Callable[[], str],
        chunk_bytes: int = CHUNK_BYTES,
        window: int = WINDOW_CHUNKS,
        chunk_timeout_s: float = CHUNK_TIMEOUT_S,
    ) -> None:
        self._publish_request = publish_request
        self._connection_lost = connection_lost
        self._lost_message = lost_message
        self._chunk_bytes = chunk_bytes
        self._window = window
        self._chunk_timeout_s = chunk_timeout_s
        self._lock = threading.Lock()
        self._deliveries: queue.Queue[_Delivery | None] | None = None

    def deliver(self, payload: bytes, properties: Properties | None) -> None:
        """Hand a message from the chunks topic to the download in progress (network thread)."""
        with self._lock:
            deliveries = self._deliveries
        if deliveries is None:
            logger.debug("dropping an artifact chunk: no download in progress")
            return
        deliveries.put((payload, properties))

    def wake(self) -> None:
        """Wake the download so that it notices a lost connection."""
        with self._lock:
            if self._deliveries is not None:
                self._deliveries.put(None)

    def fetch(
        self,
        part_path: Path,
        *,
        device_id: str,
        sha256: str,
        size_bytes: int,
        timeout_s: float | None = None,
    ) -> Path:
        """Download ``sha256`` into ``part_path``, resuming from its current size."""
        offset = resume_offset(part_path, size_bytes)
        if offset == size_bytes:
            return part_path
        if offset:
            logger.info("resuming download of %s at byte %d of %d", sha256, offset, size_bytes)

        deliveries: queue.Queue[_Delivery | None] = queue.Queue()
        with self._lock:
            self._deliveries = deliveries
        transfer = _Transfer(
            self, deliveries, part_path, device_id=device_id, sha256=sha256, size=size_bytes
        )
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            with part_path.open("ab") as handle:
                transfer.run(handle, offset, deadline)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise write_failure(exc, part_path, sha256=sha256, size_bytes=size_bytes) from exc
        finally:
            with self._lock:
                self._deliveries = None
        return part_path


class _Transfer:
    """State of one download attempt: the write offset and the chunks requested or held."""

    def __init__(
        self,
        fetcher: ChunkFetcher,
        deliveries: queue.Queue[_Delivery | None],
        part_path: Path,
        *,
        device_id: str,
        sha256: str,
        size: int,
    ) -> None:
        self._fetcher = fetcher
        self._deliveries = deliveries
        self._part_path = part_path
        self._device_id = device_id
        self._sha256 = sha256
        self._size = size
        self._next_request = 0
        self._outstanding: set[int] = set()
        self._held: dict[int, fleet_pb2.ArtifactChunk] = {}
        self._crc_failures = 0

    def run(self, handle: BinaryIO, offset: int, deadline: float | None) -> None:
        self._next_request = offset
        self._fill_window()
        while offset < self._size:
            chunk = self._next_chunk(offset, deadline)
            if chunk is None or chunk.offset < offset or chunk.offset in self._held:
                continue  # a duplicate, or left over from an earlier attempt
            self._outstanding.discard(chunk.offset)
            self._held[chunk.offset] = chunk
            while offset in self._held:
                offset = self._write(handle, self._held.pop(offset), offset)
            if offset < self._size and offset not in self._outstanding and offset not in self._held:
                # The controller sent a shorter chunk than requested: ask for the gap.
                self._request(offset)
                self._next_request = max(self._next_request, offset + self._fetcher._chunk_bytes)
            self._fill_window()

    def _write(self, handle: BinaryIO, chunk: fleet_pb2.ArtifactChunk, offset: int) -> int:
        check_chunk(chunk, self._part_path, sha256=self._sha256, offset=offset, size=self._size)
        if not chunk.data:
            raise CorruptArtifactError(
                f"invalid chunk while downloading {self._sha256}: empty chunk at byte {offset}"
            )
        handle.write(chunk.data)
        return offset + len(chunk.data)

    def _fill_window(self) -> None:
        while self._next_request < self._size and len(self._outstanding) < self._fetcher._window:
            self._request(self._next_request)
            self._next_request += self._fetcher._chunk_bytes

    def _request(self, offset: int) -> None:
        self._outstanding.add(offset)
        self._fetcher._publish_request(
            fleet_pb2.ArtifactRequest(
                device_id=self._device_id,
                sha256=self._sha256,
                offset=offset,
                chunk_size=self._fetcher._chunk_bytes,
            )
        )

    def _next_chunk(self, offset: int, deadline: float | None) -> fleet_pb2.ArtifactChunk | None:
        """Wait for the next chunk; returns None for a message to skip."""
        fetcher = self._fetcher
        wait_s = fetcher._chunk_timeout_s
        if deadline is not None:
            wait_s = min(wait_s, deadline - time.monotonic())
        try:
            delivery = self._deliveries.get(timeout=max(wait_s, 0.0))
        except queue.Empty:
            raise ControllerUnavailable(
                f"download of {self._sha256} stalled at byte {offset} of {self._size}: no chunk "
                f"within {wait_s:.1f} s; it resumes there"
            ) from None
        if delivery is None:
            if fetcher._connection_lost.is_set():
                raise ControllerUnavailable(
                    f"download of {self._sha256} interrupted at byte {offset}: "
                    f"{fetcher._lost_message()}"
                )
            return None
        payload, properties = delivery
        self._raise_reply_error(properties)
        try:
            chunk = fleet_pb2.ArtifactChunk.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError
            logger.warning("ignoring an undecodable artifact chunk: %s", exc)
            return None
        if chunk.sha256 != self._sha256:
            return None  # a chunk of another artifact from an earlier deployment
        if not chunk.HasField("crc32") or zlib.crc32(chunk.data) != chunk.crc32:
            self._on_crc_failure(chunk)
            return None
        return chunk

    def _on_crc_failure(self, chunk: fleet_pb2.ArtifactChunk) -> None:
        self._crc_failures += 1
        if self._crc_failures > MAX_CRC_FAILURES:
            self._part_path.unlink(missing_ok=True)
            raise CorruptArtifactError(
                f"download of {self._sha256} failed: {self._crc_failures} chunks failed their "
                "CRC-32 check"
            )
        logger.warning(
            "chunk at byte %d of %s failed its CRC-32 check; requesting it again",
            chunk.offset,
            self._sha256,
        )
        self._request(chunk.offset)

    def _raise_reply_error(self, properties: Properties | None) -> None:
        error = reply_error(properties)
        if error is None:
            return
        status, message = error
        text = f"controller rejected the download of {self._sha256}: {status}: {message}"
        if status == "OUT_OF_RANGE":
            self._part_path.unlink(missing_ok=True)
        if status in ("NOT_FOUND", "OUT_OF_RANGE", "INVALID_ARGUMENT", "FAILED_PRECONDITION"):
            raise ArtifactError(text)
        raise ControllerUnavailable(text)
