"""Batched telemetry ingest shared by the gRPC and MQTT endpoints.

Endpoints ``submit`` samples (parsed, or the serialized bytes of an MQTT payload) into
one bounded queue. The ``telemetry-ingest`` thread takes up to ``batch_max`` of them at a
time, parses the bytes, and hands the batch to ``store``, which writes it in one database
transaction. One transaction per batch instead of one per sample is what lets a single
SQLite writer keep up with thousands of samples per second.

Backpressure: ``submit`` blocks while the queue is full, so a backlog burst (a fleet
flushing its outboxes after an outage) slows its senders down instead of being dropped.
MQTT then stops reading the broker's socket and the broker queues for us, and a gRPC
stream stops reading, so HTTP/2 flow control pushes back on the agent. A sample is
dropped only when ingest is stopping, when its bytes do not parse, or when the database
rejects it. Every drop is counted in ``IngestStats``.

Database outages: a batch that fails because the database is unreachable or busy
(SQLAlchemy's ``OperationalError``, or a dropped connection) is kept and stored again
with a growing delay until it succeeds. Meanwhile the queue fills and backpressure slows
the senders down, so an outage delays telemetry instead of losing it.

Receipts: a sample may come with an ``on_stored`` callback. After its batch is stored,
the ingest thread calls each callback once with the highest ``seq`` among that
callback's samples in the batch, so a sender learns which samples are safe to forget
without one message per sample. Samples that the store rejects as invalid count as
stored, because sending them again would not help. A batch that fails to store calls
no callback.

Duplicates: every message is sent at least once, so a sample can arrive twice (an MQTT
QoS 1 redelivery, a gRPC sample sent again after a lost receipt). ``RecentSamples``
keeps the last ``RECENT_SAMPLES_PER_DEVICE`` samples of each device, and the store skips
a sample it holds.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from edgefleet.controller.db import database_unavailable, error_summary
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["IngestStats", "RecentSamples", "TelemetryIngest"]

logger = logging.getLogger(__name__)

BATCH_MAX = 500
# How long the ingest thread waits to fill a batch after its first sample. It bounds the
# latency a quiet fleet adds, and at high rates batches fill well before it passes.
BATCH_WAIT_S = 0.05
# How often a blocked ``submit`` wakes to check whether ingest is stopping.
_SUBMIT_POLL_S = 0.5
# Delays between attempts to store a batch while the database is unavailable.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 10.0
# How often a continuing database outage is logged again.
OUTAGE_LOG_INTERVAL_S = 60.0

Sample = fleet_pb2.TelemetrySample | bytes
StoreBatch = Callable[[Sequence[tuple[str, fleet_pb2.TelemetrySample]]], object]
# Called on the ingest thread with the highest seq stored; it must not block.
OnStored = Callable[[int], object]
_Item = tuple[str, Sample, OnStored | None]


class _Keyed(Protocol):
    """A stored sample as ``RecentSamples`` reads it (a ``TelemetryRecord``)."""

    device_id: str
    seq: int
    sampled_at: datetime


_K = TypeVar("_K", bound=_Keyed)
# Samples per device that RecentSamples remembers: about two minutes at the agent's default
# of one sample a second. The keys take about 24 KB per device (17.5 KB measured with
# tracemalloc on Python 3.11, plus the sample times they keep alive).
RECENT_SAMPLES_PER_DEVICE = 128


@dataclasses.dataclass(frozen=True, slots=True)
class IngestStats:
    """Counters of one ``TelemetryIngest`` since it started."""

    submitted: int
    stored_batches: int
    stored_samples: int  # handed to the store, including samples it rejects as invalid
    dropped: int  # lost: undecodable, failed batch, or submitted while stopping
    queued: int
    blocked_submits: int  # submits that found the queue full and waited


class TelemetryIngest:
    """A bounded queue of samples and the thread that stores them in batches."""

    def __init__(
        self,
        store: StoreBatch,
        *,
        queue_max: int,
        batch_max: int = BATCH_MAX,
        batch_wait_s: float = BATCH_WAIT_S,
        on_undecodable: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self._store = store
        self._queue: queue.Queue[_Item] = queue.Queue(queue_max)
        self._batch_max = batch_max
        self._batch_wait_s = batch_wait_s
        self._on_undecodable = on_undecodable
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry-ingest", daemon=True)
        self._lock = threading.Lock()
        self._submitted = 0
        self._batches = 0
        self._stored = 0
        self._dropped = 0
        self._blocked = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Store what is queued, then stop; later submits are dropped and counted."""
        self._stopping.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("telemetry ingest did not drain within %.1f s", timeout_s)
        if self.stats().dropped:
            logger.warning("telemetry ingest dropped %d samples", self.stats().dropped)

    def offer(self, device_id: str, sample: Sample, on_stored: OnStored | None = None) -> bool:
        """Queue one sample if there is room now; returns False, counting nothing, if not."""
        try:
            self._queue.put_nowait((device_id, sample, on_stored))
        except queue.Full:
            return False
        with self._lock:
            self._submitted += 1
        return True

    def submit(self, device_id: str, sample: Sample, on_stored: OnStored | None = None) -> bool:
        """Queue one sample, blocking while the queue is full; returns False if dropped."""
        item = (device_id, sample, on_stored)
        with self._lock:
            self._submitted += 1
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            with self._lock:
                self._blocked += 1
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=_SUBMIT_POLL_S)
                return True
            except queue.Full:
                continue
        self._count_dropped(1)
        return False

    def stats(self) -> IngestStats:
        with self._lock:
            return IngestStats(
                submitted=self._submitted,
                stored_batches=self._batches,
                stored_samples=self._stored,
                dropped=self._dropped,
                queued=self._queue.qsize(),
                blocked_submits=self._blocked,
            )

    # -- the ingest thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set() or not self._queue.empty():
            batch = self._next_batch()
            if batch:
                self._store_batch(batch)

    def _next_batch(self) -> list[_Item]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self._batch_wait_s
        while len(batch) < self._batch_max:
            try:
                # Take what is already queued without waiting; wait only when it is empty.
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _store_batch(self, batch: list[_Item]) -> None:
        samples = []
        highest_seq: dict[OnStored, int] = {}
        for device_id, sample, on_stored in batch:
            if isinstance(sample, bytes):
                try:
                    sample = fleet_pb2.TelemetrySample.FromString(sample)
                except Exception as exc:  # protobuf's DecodeError
                    self._count_dropped(1)
                    if self._on_undecodable is not None:
                        self._on_undecodable(device_id, exc)
                    continue
            samples.append((device_id, sample))
            if on_stored is not None:
                highest_seq[on_stored] = max(highest_seq.get(on_stored, 0), sample.seq)
        stored = self._store_samples(samples)
        if not stored:
            return
        with self._lock:
            self._batches += 1
            self._stored += stored
        for on_stored, seq in highest_seq.items():
            try:
                on_stored(seq)
            except Exception:
                logger.exception("a telemetry receipt callback failed for seq %d", seq)

    def _store_samples(self, samples: list[tuple[str, fleet_pb2.TelemetrySample]]) -> int:
        """Store ``samples`` in one transaction; returns how many were stored.

        While the database is unavailable the batch is retried (see the module
        docstring). When the database rejects the batch, each sample is stored on its
        own, so a sample that the database rejects loses only itself. The senders already
        have their acknowledgements (MQTT PUBACK), so such a sample is counted and logged.
        """
        try:
            self._store_when_available(samples)
            return len(samples)
        except _StoppedDuringOutage:
            self._count_dropped(len(samples))
            return 0
        except Exception:
            logger.exception(
                "storing a batch of %d telemetry samples failed; storing them one at a time",
                len(samples),
            )
        stored = 0
        for device_id, sample in samples:
            try:
                self._store([(device_id, sample)])
                stored += 1
            except Exception as exc:
                self._count_dropped(1)
                logger.warning(
                    "dropped telemetry sample %d of device %s: storing it failed: %s",
                    sample.seq,
                    device_id,
                    exc,
                    extra={"device_id": device_id},
                )
        return stored

    def _store_when_available(self, samples: list[tuple[str, fleet_pb2.TelemetrySample]]) -> None:
        """Store ``samples``, retrying while the database is unavailable.

        Raises ``_StoppedDuringOutage`` when ingest stops before the database is back, and
        any other error of the store at once.
        """
        delay_s = RETRY_INITIAL_S
        outage_started: float | None = None
        logged_at = 0.0
        while True:
            try:
                self._store(samples)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                now = time.monotonic()
                if outage_started is None:
                    outage_started = now
                if now - logged_at >= OUTAGE_LOG_INTERVAL_S:
                    logged_at = now
                    logger.warning(
                        "cannot store %d telemetry samples for %.0f s because the database "
                        "is unavailable (%s); holding them and retrying, so senders wait",
                        len(samples),
                        now - outage_started,
                        error_summary(exc),
                    )
                if self._stopping.is_set():
                    logger.error(
                        "dropped %d telemetry samples: ingest stopped while the database "
                        "was unavailable",
                        len(samples),
                    )
                    raise _StoppedDuringOutage from exc
                self._stopping.wait(delay_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)
                continue
            if outage_started is not None:
                logger.info(
                    "stored %d held telemetry samples; the database was unavailable for %.1f s",
                    len(samples),
                    time.monotonic() - outage_started,
                )
            return

    def _count_dropped(self, count: int) -> None:
        with self._lock:
            self._dropped += count


class _StoppedDuringOutage(Exception):
    """Ingest stopped while a batch waited for the database to come back."""


class RecentSamples:
    """The last stored samples of each device, to skip a sample that arrives again.

    A sample is known by its ``seq`` and ``sampled_at``, both set by the agent, so an
    agent whose ``seq`` restarts at 1 (a new outbox) sends new keys. Only the ingest
    thread uses it, so it takes no lock.
    """

    def __init__(self, per_device: int = RECENT_SAMPLES_PER_DEVICE) -> None:
        self._per_device = per_device
        self._keys: dict[str, tuple[deque[Hashable], set[Hashable]]] = {}

    def fresh(self, samples: Iterable[_K]) -> tuple[list[_K], list[_K]]:
        """Split samples into those not stored yet and duplicates, in their order.

        A sample that repeats an earlier one of the same call is a duplicate too.
        """
        fresh: list[_K] = []
        duplicates: list[_K] = []
        batch_keys: set[tuple[str, Hashable]] = set()
        for sample in samples:
            key = (sample.seq, sample.sampled_at)
            known = self._keys.get(sample.device_id)
            if (sample.device_id, key) in batch_keys or (known is not None and key in known[1]):
                duplicates.append(sample)
                continue
            batch_keys.add((sample.device_id, key))
            fresh.append(sample)
        return fresh, duplicates

    def remember(self, samples: Iterable[_Keyed]) -> None:
        """Record stored samples, forgetting each device's oldest beyond the window."""
        for sample in samples:
            order, keys = self._keys.setdefault(sample.device_id, (deque(), set()))
            key = (sample.seq, sample.sampled_at)
            if key in keys:
                continue
            order.append(key)
            keys.add(key)
            if len(order) > self._per_device:
                keys.discard(order.popleft())
