"""Validation of telemetry samples received from agents.

A sample with a NaN, infinite or negative figure is dropped as a whole: one bad field
means the agent's sampler is broken, so its other fields are not trusted either.
``DropCounter`` counts drops per device and rate-limits the WARNING lines they cause.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from datetime import UTC, datetime

from edgefleet.controller.errors import InvalidTelemetryError
from edgefleet.controller.ratelimit import ThrottledLog
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["DropCounter", "TelemetryRecord", "validate_sample"]

logger = logging.getLogger(__name__)

# Fields that must be finite and non-negative.
# Unsigned 64-bit protobuf fields stored in signed 64-bit columns (BIGINT, SQLite INTEGER).
_COUNTER_FIELDS = ("seq", "requests", "dropped_samples")
_MAX_COUNTER = 2**63 - 1
_NON_NEGATIVE_FIELDS = (
    "cpu_percent",
    "memory_total_mb",
    "memory_available_mb",
    "load_1m",
    "load_5m",
    "load_15m",
    "disk_free_mb",
    "agent_rss_mb",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "throughput_rps",
    "window_s",
)
# Absolute zero: a lower reading is a sensor or driver fault.
_MIN_TEMPERATURE_C = -273.15


@dataclasses.dataclass(frozen=True, slots=True)
class TelemetryRecord:
    """A validated telemetry sample, as stored and as seen by the policy engine."""

    device_id: str
    seq: int
    sampled_at: datetime
    received_at: datetime
    variant_id: str
    cpu_percent: float
    memory_total_mb: float
    memory_available_mb: float
    load_1m: float
    load_5m: float
    load_15m: float
    disk_free_mb: float
    temperature_c: float | None
    agent_rss_mb: float
    requests: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    throughput_rps: float
    window_s: float
    dropped_samples: int = 0  # the agent's count of samples its offline backlog dropped

    def to_dict(self) -> dict[str, object]:
        """Return the record as JSON-safe values (times as ISO 8601 strings)."""
        data = dataclasses.asdict(self)
        data["sampled_at"] = self.sampled_at.isoformat()
        data["received_at"] = self.received_at.isoformat()
        return data


# 9999-12-31T23:59:59Z, the last instant datetime can represent.
_MAX_SAMPLED_AT_MS = 253_402_300_799_000


def validate_sample(
    sample: fleet_pb2.TelemetrySample, *, device_id: str, received_at: datetime | None = None
) -> TelemetryRecord:
    """Check a sample from ``device_id``'s session and return it as a record.

    Raises ``InvalidTelemetryError`` (with ``field`` set) for a NaN, infinite or negative
    figure, a counter beyond the database's signed 64-bit range, a temperature below
    absolute zero, or a sample that names another device.
    """
    if sample.device_id and sample.device_id != device_id:
        raise InvalidTelemetryError(
            f"sample names device {sample.device_id!r} but arrived on the session of {device_id!r}",
            field="device_id",
        )
    for field in _NON_NEGATIVE_FIELDS:
        value = getattr(sample, field)
        if not math.isfinite(value) or value < 0:
            raise InvalidTelemetryError(
                f"{field} must be a finite non-negative number, got {value!r}", field=field
            )
    temperature = sample.temperature_c if sample.HasField("temperature_c") else None
    if temperature is not None and (
        not math.isfinite(temperature) or temperature < _MIN_TEMPERATURE_C
    ):
        raise InvalidTelemetryError(
            f"temperature_c must be a finite number above {_MIN_TEMPERATURE_C}, "
            f"got {temperature!r}",
            field="temperature_c",
        )
    for field in _COUNTER_FIELDS:
        value = getattr(sample, field)
        if value > _MAX_COUNTER:
            raise InvalidTelemetryError(
                f"{field} must be at most {_MAX_COUNTER} (a signed 64-bit database integer), "
                f"got {value}",
                field=field,
            )
    if not 0 <= sample.sampled_at_ms <= _MAX_SAMPLED_AT_MS:
        raise InvalidTelemetryError(
            f"sampled_at_ms must be between 0 and {_MAX_SAMPLED_AT_MS} (Unix milliseconds), "
            f"got {sample.sampled_at_ms}",
            field="sampled_at_ms",
        )

    return TelemetryRecord(
        device_id=device_id,
        seq=sample.seq,
        sampled_at=datetime.fromtimestamp(sample.sampled_at_ms / 1000, UTC),
        received_at=received_at or datetime.now(UTC),
        variant_id=sample.variant_id,
        cpu_percent=sample.cpu_percent,
        memory_total_mb=sample.memory_total_mb,
        memory_available_mb=sample.memory_available_mb,
        load_1m=sample.load_1m,
        load_5m=sample.load_5m,
        load_15m=sample.load_15m,
        disk_free_mb=sample.disk_free_mb,
        temperature_c=temperature,
        agent_rss_mb=sample.agent_rss_mb,
        requests=sample.requests,
        latency_p50_ms=sample.latency_p50_ms,
        latency_p95_ms=sample.latency_p95_ms,
        latency_p99_ms=sample.latency_p99_ms,
        throughput_rps=sample.throughput_rps,
        window_s=sample.window_s,
        dropped_samples=sample.dropped_samples,
    )


class DropCounter:
    """Counts dropped samples per device and logs a WARNING for some of them.

    A device's first drop is logged, then at most one line a minute for each device and
    invalid field, with the drops left out since, so a broken sampler cannot flood the
    log at one line a second.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._log = ThrottledLog(logger)

    def record(self, device_id: str, error: InvalidTelemetryError) -> int:
        """Count one dropped sample and return the device's drop count so far."""
        with self._lock:
            count = self._counts.get(device_id, 0) + 1
            self._counts[device_id] = count
        self._log.log(
            (device_id, error.field),
            "dropped telemetry sample from device %s: invalid field %s: %s "
            "(%d samples dropped from this device)",
            device_id,
            error.field,
            error,
            count,
            extra={"device_id": device_id},
        )
        return count

    def counts(self) -> dict[str, int]:
        """Return the drop count of every device that had a sample dropped."""
        with self._lock:
            return dict(self._counts)

    def count(self, device_id: str | None = None) -> int:
        """Return the drops of one device, or of all devices when ``device_id`` is None."""
        with self._lock:
            if device_id is None:
                return sum(self._counts.values())
            return self._counts.get(device_id, 0)
