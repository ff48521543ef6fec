from __future__ import annotations

import logging
import math

import pytest
from controller_support import BACKENDS, make_sample

from edgefleet.controller.telemetry import DropCounter, InvalidTelemetryError, validate_sample


def test_valid_sample_becomes_record() -> None:
    record = validate_sample(make_sample(), device_id="dev-1")

    assert record.device_id == "dev-1"
    assert record.sampled_at.year >= 2020


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpu_percent", math.nan),
        ("memory_available_mb", -1.0),
        ("latency_p95_ms", math.inf),
        ("sampled_at_ms", 2**62),
        ("sampled_at_ms", -1),
        ("seq", 2**63),
        ("requests", 2**64 - 1),
        ("dropped_samples", 2**63),
    ],
)
def test_invalid_sample_names_field(field: str, value: float) -> None:
    sample = make_sample()
    setattr(sample, field, value)

    with pytest.raises(InvalidTelemetryError, match=field):
        validate_sample(sample, device_id="dev-1")


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_counter_beyond_int64_dropped_and_batch_kept(controller, profile) -> None:
    controller.register_device("dev-1", profile)
    samples = [
        ("dev-1", make_sample(seq=1)),
        ("dev-1", make_sample(seq=2**64 - 1)),
        ("dev-1", make_sample(seq=3, requests=2**63 - 1, dropped_samples=2**63 - 1)),
    ]

    records = controller.ingest_telemetry_batch(samples)

    assert [record.seq for record in records] == [1, 3]
    assert controller.registry.count_telemetry("dev-1") == 2
    assert controller.dropped_samples("dev-1") == 1
    newest = controller.registry.recent_telemetry("dev-1", limit=1)[0]
    assert newest.requests == 2**63 - 1


def test_drop_log_throttled_per_field(caplog) -> None:
    drops = DropCounter()
    nan = InvalidTelemetryError("cpu_percent must be finite", field="cpu_percent")
    negative = InvalidTelemetryError("load_1m must be non-negative", field="load_1m")
    caplog.set_level(logging.WARNING, logger="edgefleet.controller.telemetry")

    for _ in range(50):
        drops.record("dev-1", nan)
    drops.record("dev-1", negative)
    drops.record("dev-2", nan)

    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3
    assert "device dev-1: invalid field cpu_percent" in lines[0]
    assert "invalid field load_1m" in lines[1]
    assert "(51 samples dropped from this device)" in lines[1]
    assert "device dev-2" in lines[2]
    assert drops.count("dev-1") == 51
    assert drops.count() == 52
