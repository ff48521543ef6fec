from __future__ import annotations

import time

import numpy as np
import pytest

from edgefleet.agent.latency import LatencyRecorder


def test_latency_window_matches_numpy_percentiles():
    values = [float(v) for v in np.random.default_rng(1).gamma(2.0, 3.0, size=500)]
    recorder = LatencyRecorder()
    for value in values:
        recorder.record(value)

    window = recorder.take_window()

    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    assert window.requests == 500
    assert window.p50_ms == pytest.approx(p50)
    assert window.p95_ms == pytest.approx(p95)
    assert window.p99_ms == pytest.approx(p99)


def test_latency_window_throughput_over_window_length():
    recorder = LatencyRecorder()
    recorder.take_window()
    for _ in range(10):
        recorder.record(1.0)
    time.sleep(0.2)

    window = recorder.take_window()

    assert window.window_s >= 0.2
    assert window.throughput_rps == pytest.approx(10 / window.window_s)


def test_latency_empty_window_reports_zeros():
    window = LatencyRecorder().take_window()
    assert window.requests == 0
    assert (window.p50_ms, window.p95_ms, window.p99_ms, window.throughput_rps) == (0, 0, 0, 0)


def test_latency_take_window_starts_new_window():
    recorder = LatencyRecorder()
    recorder.record(5.0)
    recorder.take_window()
    assert recorder.take_window().requests == 0


def test_latency_reservoir_bounded_and_unbiased():
    recorder = LatencyRecorder(max_samples=1000, seed=3)
    values = np.random.default_rng(2).permutation(100_000).astype(float)
    for value in values:
        recorder.record(value)

    assert len(recorder._samples) == 1000
    window = recorder.take_window()

    assert window.requests == 100_000
    # In a uniform sample of 1000 the standard errors of the p50, p95 and p99 ranks are
    # 1.6, 0.7 and 0.3 percentiles. Each bound is about three standard errors.
    assert window.p50_ms == pytest.approx(50_000, abs=5_000)
    assert window.p95_ms == pytest.approx(95_000, abs=2_100)
    assert window.p99_ms == pytest.approx(99_000, abs=1_000)
