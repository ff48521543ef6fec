"""Latency of served inference requests, summarised once per telemetry window."""

from __future__ import annotations

import dataclasses
import random
import threading
import time

import numpy as np

__all__ = ["LatencyRecorder", "LatencyWindow"]

# Percentiles come from a uniform sample of at most this many requests per window, so
# memory stays fixed however busy the device is. With 4096 samples the standard error of
# the p99 estimate is about 0.16 percentile ranks (sqrt(0.99 * 0.01 / 4096)).
MAX_SAMPLES_PER_WINDOW = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class LatencyWindow:
    """Requests served in one window, their latency percentiles (ms) and throughput."""

    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float
    window_s: float


class LatencyRecorder:
    """Thread-safe latency log; ``take_window`` summarises and starts a new window."""

    def __init__(
        self, *, max_samples: int = MAX_SAMPLES_PER_WINDOW, seed: int | None = None
    ) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        self._max_samples = max_samples
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._samples: list[float] = []
        self._count = 0
        self._window_start = time.monotonic()

    def record(self, latency_ms: float) -> None:
        with self._lock:
            self._count += 1
            if len(self._samples) < self._max_samples:
                self._samples.append(latency_ms)
                return
            # Reservoir sampling (Vitter's algorithm R): every request of the window has the
            # same chance max_samples / count of being in the sample.
            slot = self._rng.randrange(self._count)
            if slot < self._max_samples:
                self._samples[slot] = latency_ms

    def take_window(self) -> LatencyWindow:
        """Summarise the requests since the previous call and start a new window."""
        now = time.monotonic()
        with self._lock:
            samples, count = self._samples, self._count
            window_s = max(now - self._window_start, 1e-9)
            self._samples, self._count, self._window_start = [], 0, now

        if not count:
            return LatencyWindow(0, 0.0, 0.0, 0.0, 0.0, window_s)
        p50, p95, p99 = np.percentile(np.asarray(samples, dtype=np.float64), [50, 95, 99])
        return LatencyWindow(count, float(p50), float(p95), float(p99), count / window_s, window_s)
