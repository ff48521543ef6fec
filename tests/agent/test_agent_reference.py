from __future__ import annotations

import hashlib

import pytest

from edgefleet.agent import reference
from edgefleet.agent.calibration import REFERENCE_MODEL_PATH, measure_reference, reference_sha256


def test_reference_model_matches_generator():
    assert REFERENCE_MODEL_PATH.read_bytes() == reference.build_reference_model()


def test_reference_model_is_small():
    assert REFERENCE_MODEL_PATH.stat().st_size < 300 * 1024


def test_reference_generator_check_passes():
    assert reference.main(["--check"]) == 0


def test_measure_reference_reports_calibration():
    calibration = measure_reference(1, duration_s=0.2)

    expected_sha = hashlib.sha256(REFERENCE_MODEL_PATH.read_bytes()).hexdigest()
    assert calibration.reference_sha256 == expected_sha == reference_sha256()
    assert calibration.threads == 1
    assert calibration.runs >= 20
    assert 0 < calibration.latency_p50_ms <= calibration.latency_p95_ms


@pytest.mark.parametrize(("threads", "duration_s"), [(0, 1.0), (1, 0.0)])
def test_measure_reference_rejects_bad_arguments(threads, duration_s):
    with pytest.raises(ValueError):
        measure_reference(threads, duration_s=duration_s)
