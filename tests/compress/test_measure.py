from __future__ import annotations

import pytest

from edgefleet.compress import MeasurementError, export_onnx, measure_latency, measure_peak_memory


@pytest.fixture(scope="module")
def small_onnx(small_cnn, small_digits, tmp_path_factory):
    return export_onnx(small_cnn, small_digits.x_val, tmp_path_factory.mktemp("m") / "m.onnx")


def test_latency_percentiles_are_ordered(small_onnx):
    stats = measure_latency(small_onnx, threads=1, runs=50, warmup=5)
    assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
    assert stats.runs == 50
    assert stats.threads == 1


def test_latency_rejects_zero_runs(small_onnx):
    with pytest.raises(MeasurementError, match="runs must be >= 1"):
        measure_latency(small_onnx, threads=1, runs=0)


def test_peak_memory_counts_session_not_interpreter(small_onnx):
    # The parent imported torch (hundreds of MB); the child's figure must not include it.
    peak = measure_peak_memory(small_onnx, threads=1)
    assert 0 < peak < 100


def test_peak_memory_reports_failed_probe(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"junk")
    with pytest.raises(MeasurementError, match="memory probe"):
        measure_peak_memory(broken, threads=1)
