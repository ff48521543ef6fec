from __future__ import annotations

import math

import pytest
from controller_support import make_sample

from edgefleet.controller.telemetry import InvalidTelemetryError, validate_sample


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
    ],
)
def test_invalid_sample_names_field(field: str, value: float) -> None:
    sample = make_sample()
    setattr(sample, field, value)

    with pytest.raises(InvalidTelemetryError, match=field):
        validate_sample(sample, device_id="dev-1")
