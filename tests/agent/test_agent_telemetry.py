from __future__ import annotations

import math

import psutil

from edgefleet.agent.latency import LatencyRecorder
from edgefleet.agent.telemetry import TelemetrySampler, read_temperature_c


def test_telemetry_sample_fields_sane(tmp_path):
    latency = LatencyRecorder()
    sampler = TelemetrySampler(
        device_id="dev-1", state_dir=tmp_path, latency=latency, variant_id=lambda: "v1"
    )
    for value in (1.0, 2.0, 3.0):
        latency.record(value)

    first = sampler.sample()
    second = sampler.sample()

    assert (first.seq, second.seq) == (1, 2)
    assert first.device_id == "dev-1"
    assert first.variant_id == "v1"
    assert first.sampled_at_ms > 1_600_000_000_000
    assert 0 <= first.cpu_percent <= 100
    assert 0 < first.memory_available_mb <= first.memory_total_mb
    assert first.memory_total_mb == psutil.virtual_memory().total / 2**20
    assert first.load_1m >= 0
    assert first.disk_free_mb > 0
    assert 1 < first.agent_rss_mb < first.memory_total_mb
    assert first.requests == 3
    assert first.latency_p50_ms == 2.0
    assert first.window_s > 0
    assert second.requests == 0
    assert second.latency_p99_ms == 0.0


def test_telemetry_values_finite(tmp_path):
    sampler = TelemetrySampler(
        device_id="dev-1", state_dir=tmp_path, latency=LatencyRecorder(), variant_id=lambda: ""
    )
    sample = sampler.sample()
    for field, value in sample.ListFields():
        if isinstance(value, float):
            assert math.isfinite(value), field.name
            if field.name != "temperature_c":
                assert value >= 0, field.name


def test_telemetry_temperature_when_sensor_exists(tmp_path):
    sampler = TelemetrySampler(
        device_id="dev-1", state_dir=tmp_path, latency=LatencyRecorder(), variant_id=lambda: ""
    )
    sample = sampler.sample()
    assert sample.HasField("temperature_c") == (read_temperature_c() is not None)
