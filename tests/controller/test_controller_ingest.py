from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from controller_support import make_sample, wait_for

from edgefleet.controller.ingest import RecentSamples, TelemetryIngest
from edgefleet.protos.v1 import fleet_pb2

Batch = Sequence[tuple[str, fleet_pb2.TelemetrySample]]


class _Receipts:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    def record(self, seq: int) -> None:
        self.seqs.append(seq)


def test_ingest_reports_highest_seq_per_batch() -> None:
    stored: list[Batch] = []
    gate = threading.Event()

    def store(batch: Batch) -> None:
        stored.append(list(batch))
        gate.wait(10)

    ingest = TelemetryIngest(store, queue_max=100, batch_wait_s=0.0)
    ingest.start()
    first, second = _Receipts(), _Receipts()
    # The first sample is stored alone and held at the gate; the rest queue behind it.
    ingest.submit("dev-1", make_sample(seq=1), first.record)
    wait_for(lambda: len(stored) == 1)
    for seq in (2, 4, 3):
        ingest.submit("dev-1", make_sample(seq=seq), first.record)
    ingest.submit("dev-2", make_sample("dev-2", seq=7), second.record)
    ingest.submit("dev-3", make_sample("dev-3", seq=9))
    gate.set()
    wait_for(lambda: ingest.stats().stored_samples == 6)
    ingest.stop()

    assert [len(batch) for batch in stored] == [1, 5]
    assert first.seqs == [1, 4]
    assert second.seqs == [7]


def test_ingest_failed_batch_sends_no_receipt() -> None:
    def store(_batch: Batch) -> None:
        raise RuntimeError("disk full")

    ingest = TelemetryIngest(store, queue_max=10, batch_wait_s=0.0)
    ingest.start()
    receipts = _Receipts()
    ingest.submit("dev-1", make_sample(seq=5), receipts.record)
    wait_for(lambda: ingest.stats().dropped == 1)
    ingest.stop()

    assert receipts.seqs == []


def test_ingest_failed_batch_retried_per_sample() -> None:
    stored: list[tuple[str, fleet_pb2.TelemetrySample]] = []

    def store(batch: Batch) -> None:
        if any(device_id == "dev-bad" for device_id, _sample in batch):
            raise RuntimeError("the database rejected a row")
        stored.extend(batch)

    ingest = TelemetryIngest(store, queue_max=10, batch_wait_s=0.5)
    receipts = _Receipts()
    # Queued before the thread starts, so all three form one batch.
    ingest.submit("dev-1", make_sample(seq=1), receipts.record)
    ingest.submit("dev-bad", make_sample("dev-bad", seq=2))
    ingest.submit("dev-1", make_sample(seq=3), receipts.record)
    ingest.start()
    wait_for(lambda: ingest.stats().stored_samples + ingest.stats().dropped == 3)
    ingest.stop()

    assert [sample.seq for _device_id, sample in stored] == [1, 3]
    assert ingest.stats().dropped == 1
    assert receipts.seqs == [3]


def test_ingest_undecodable_bytes_not_acknowledged() -> None:
    stored: list[Batch] = []
    ingest = TelemetryIngest(stored.append, queue_max=10, batch_wait_s=0.5)
    ingest.start()
    receipts = _Receipts()
    ingest.submit("dev-1", b"\xff\xff\xff", receipts.record)
    ingest.submit("dev-1", make_sample(seq=3).SerializeToString())
    wait_for(lambda: ingest.stats().stored_samples + ingest.stats().dropped == 2)
    ingest.stop()

    assert receipts.seqs == []
    assert [sample.seq for batch in stored for _device, sample in batch] == [3]


@dataclasses.dataclass(frozen=True)
class KeyedSample:
    device_id: str
    seq: int
    sampled_at: datetime


def test_recent_samples_window_forgets_oldest():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    recent = RecentSamples(per_device=2)
    first, second, third = (KeyedSample("dev-1", seq, at) for seq in (1, 2, 3))
    recent.remember([first, second, third])

    fresh, duplicates = recent.fresh(
        [first, third, KeyedSample("dev-2", 3, at), KeyedSample("dev-1", 3, at.replace(year=2027))]
    )

    assert duplicates == [third]
    assert [(s.device_id, s.seq) for s in fresh] == [("dev-1", 1), ("dev-2", 3), ("dev-1", 3)]


def test_recent_samples_duplicate_within_one_batch():
    sample = KeyedSample("dev-1", 7, datetime(2026, 1, 1, tzinfo=UTC))
    fresh, duplicates = RecentSamples().fresh([sample, sample, sample])

    assert fresh == [sample]
    assert duplicates == [sample, sample]
