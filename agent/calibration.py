"""Calibration: the latency of the committed reference model at a given thread count.

The agent sends the result at registration. The controller runs ``measure_reference`` on
its own host with the same thread count, and divides the two p50 figures to scale its
latency measurements to the device.
"""

from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path

import numpy as np

from edgefleet.agent.runtime import create_session
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["REFERENCE_MODEL_PATH", "measure_reference", "reference_sha256"]

REFERENCE_MODEL_PATH = Path(__file__).resolve().parent / "reference.onnx"

# Runs before the timed ones, to let onnxruntime allocate its buffers and the CPU leave
# its idle frequency.
WARMUP_RUNS = 5
# Fewer timed runs than this make the p95 the maximum, so slow devices run past duration_s.
MIN_RUNS = 20


@functools.cache
def reference_sha256(path: Path = REFERENCE_MODEL_PATH) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def measure_reference(
    threads: int, *, duration_s: float = 1.0, path: Path = REFERENCE_MODEL_PATH
) -> fleet_pb2.Calibration:
    """Time the reference model for about ``duration_s`` seconds at ``threads`` intra-op threads.

    Raises ``ModelLoadError`` if onnxruntime cannot load the file.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")

    session = create_session(Path(path), threads=threads)
    model_input = session.get_inputs()[0]
    shape = [dim if isinstance(dim, int) else 1 for dim in model_input.shape]
    feeds = {model_input.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    for _ in range(WARMUP_RUNS):
        session.run(None, feeds)

    latencies_ms: list[float] = []
    deadline = time.perf_counter() + duration_s
    while len(latencies_ms) < MIN_RUNS or time.perf_counter() < deadline:
        started = time.perf_counter()
        session.run(None, feeds)
        latencies_ms.append((time.perf_counter() - started) * 1000.0)

    p50, p95 = np.percentile(np.asarray(latencies_ms), [50, 95])
    return fleet_pb2.Calibration(
        reference_sha256=reference_sha256(Path(path)),
        threads=threads,
        runs=len(latencies_ms),
        latency_p50_ms=float(p50),
        latency_p95_ms=float(p95),
    )
