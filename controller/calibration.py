"""Host calibration: the controller's own latency on the agent's reference model.

The planner measures variant latency on the controller host. A device's latency scale,
``device_p50 / host_p50`` on the same reference model at the same thread count, converts
those host figures into expected device figures. Host figures are measured once per
thread count and cached for the life of the process.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

from edgefleet.ids import validate_sha256
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["DeviceCalibration", "HostCalibration", "parse_calibration"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceCalibration:
    """A device's measurement of the reference model, validated."""

    reference_sha256: str
    threads: int
    runs: int
    latency_p50_ms: float
    latency_p95_ms: float

    def to_dict(self) -> dict[str, object]:
        return {
            "reference_sha256": self.reference_sha256,
            "threads": self.threads,
            "runs": self.runs,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
        }


def parse_calibration(message: fleet_pb2.Calibration) -> DeviceCalibration:
    """Validate a ``Calibration`` message; raises ``InvalidInputError`` naming the field."""
    from edgefleet.errors import InvalidInputError

    try:
        validate_sha256(message.reference_sha256)
    except InvalidInputError as exc:
        raise InvalidInputError(f"calibration.reference_sha256: {exc}") from None
    for field in ("threads", "runs"):
        if getattr(message, field) < 1:
            raise InvalidInputError(
                f"calibration.{field} must be at least 1, got {getattr(message, field)}"
            )
    for field in ("latency_p50_ms", "latency_p95_ms"):
        value = getattr(message, field)
        if not math.isfinite(value) or value <= 0:
            raise InvalidInputError(
                f"calibration.{field} must be a positive finite number, got {value!r}"
            )
    return DeviceCalibration(
        reference_sha256=message.reference_sha256,
        threads=message.threads,
        runs=message.runs,
        latency_p50_ms=message.latency_p50_ms,
        latency_p95_ms=message.latency_p95_ms,
    )


class HostCalibration:
    """Measures and caches the host's reference-model latency per thread count."""

    def __init__(self, *, duration_s: float = 2.0) -> None:
        self._duration_s = duration_s
        self._p50_ms: dict[int, float] = {}
        self._lock = threading.Lock()

    @property
    def reference_sha256(self) -> str:
        from edgefleet.agent.calibration import reference_sha256

        return reference_sha256()

    def cached_p50_ms(self, threads: int) -> float | None:
        with self._lock:
            return self._p50_ms.get(threads)

    def measure(self, threads: int) -> float:
        """Return the host's p50 latency in ms at ``threads``, measuring it on first use.

        Measuring takes about ``duration_s`` seconds and should not overlap a plan,
        because both compete for the same cores.
        """
        cached = self.cached_p50_ms(threads)
        if cached is not None:
            return cached
        from edgefleet.agent.calibration import measure_reference

        result = measure_reference(threads, duration_s=self._duration_s)
        with self._lock:
            self._p50_ms[threads] = result.latency_p50_ms
        logger.info(
            "host reference latency at %d threads: p50 %.3f ms over %d runs",
            threads,
            result.latency_p50_ms,
            result.runs,
        )
        return result.latency_p50_ms

    def latency_scale(self, calibration: DeviceCalibration) -> float | None:
        """Return ``device_p50 / host_p50``, or None when the host is not measured yet.

        Also returns None (and logs a WARNING) when the device measured another
        reference model than this controller ships, because the ratio would be meaningless.
        """
        if calibration.reference_sha256 != self.reference_sha256:
            logger.warning(
                "device calibration used reference model %s but this controller has %s; "
                "ignoring it (agent and controller versions differ?)",
                calibration.reference_sha256[:12],
                self.reference_sha256[:12],
            )
            return None
        host_p50 = self.cached_p50_ms(calibration.threads)
        if host_p50 is None:
            return None
        return calibration.latency_p50_ms / host_p50
