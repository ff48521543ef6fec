"""Telemetry samples: psutil resource figures plus the latency of the last window."""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from edgefleet.agent.latency import LatencyRecorder
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["TelemetrySampler", "read_temperature_c"]

logger = logging.getLogger(__name__)

_MB = 1024.0 * 1024.0

# Sensor names in psutil.sensors_temperatures(), most relevant first: the SoC sensor on
# Raspberry Pi OS, then the usual x86 CPU sensors.
_PREFERRED_SENSORS = ("cpu_thermal", "soc_thermal", "coretemp", "k10temp", "cpu-thermal")


class TelemetrySampler:
    """Builds one ``TelemetrySample`` per call, numbered from 1 for the process's life."""

    def __init__(
        self,
        *,
        device_id: str,
        state_dir: Path,
        latency: LatencyRecorder,
        variant_id: Callable[[], str],
    ) -> None:
        self._device_id = device_id
        self._state_dir = Path(state_dir)
        self._latency = latency
        self._variant_id = variant_id
        self._process = psutil.Process()
        self._seq = 0
        self._lock = threading.Lock()
        # cpu_percent(interval=None) compares with the previous call. This first call sets
        # the baseline, so that the first sample is not a meaningless 0.0.
        psutil.cpu_percent(interval=None)

    def sample(self) -> fleet_pb2.TelemetrySample:
        with self._lock:
            self._seq += 1
            seq = self._seq
        memory = psutil.virtual_memory()
        load_1m, load_5m, load_15m = os.getloadavg()
        window = self._latency.take_window()

        sample = fleet_pb2.TelemetrySample(
            device_id=self._device_id,
            seq=seq,
            sampled_at_ms=int(time.time() * 1000),
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_total_mb=memory.total / _MB,
            memory_available_mb=memory.available / _MB,
            load_1m=load_1m,
            load_5m=load_5m,
            load_15m=load_15m,
            disk_free_mb=shutil.disk_usage(self._state_dir).free / _MB,
            agent_rss_mb=self._process.memory_info().rss / _MB,
            variant_id=self._variant_id(),
            requests=window.requests,
            latency_p50_ms=window.p50_ms,
            latency_p95_ms=window.p95_ms,
            latency_p99_ms=window.p99_ms,
            throughput_rps=window.throughput_rps,
            window_s=window.window_s,
        )
        temperature = read_temperature_c()
        if temperature is not None:
            sample.temperature_c = temperature
        return sample


def read_temperature_c() -> float | None:
    """Return the CPU temperature in degrees Celsius, or ``None`` where no sensor exists."""
    # sensors_temperatures exists only on Linux and FreeBSD builds of psutil.
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except OSError as exc:
        logger.debug("cannot read temperature sensors: %s", exc)
        return None
    names = [name for name in _PREFERRED_SENSORS if name in sensors] + sorted(sensors)
    for name in names:
        for entry in sensors[name]:
            if math.isfinite(entry.current):
                return float(entry.current)
    return None
