"""Latency and peak-memory measurement of ONNX variants under onnxruntime.

Latency is single-sample (batch 1) inference in this process, the way the agent serves
requests. Peak memory is measured in a fresh child process so that this process's own
allocations (torch, earlier sessions) do not count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgefleet.compress.errors import MeasurementError
from edgefleet.compress.runtime import create_session

__all__ = [
    "LatencyStats",
    "measure_latency",
    "measure_p50_interleaved",
    "measure_peak_memory",
    "sample_input",
]

logger = logging.getLogger(__name__)

_MEMORY_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Percentiles of single-sample inference latency, in milliseconds."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    runs: int
    threads: int

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def sample_input(shape: tuple[int, ...], dtype: str = "float32", *, seed: int = 0) -> np.ndarray:
    """Return a deterministic random batch-1 input; dynamic dims (-1) become 1."""
    concrete = tuple(1 if dim < 0 else dim for dim in shape)
    return np.random.default_rng(seed).random(concrete).astype(dtype)


def measure_latency(
    onnx_path: str | Path, *, threads: int, runs: int = 200, warmup: int = 20
) -> LatencyStats:
    """Time ``runs`` batch-1 inferences after ``warmup`` untimed ones.

    The session uses ``threads`` intra-op threads, one inter-op thread and sequential
    execution, like the agent. The input is seeded random data of the graph's input
    shape; a convolutional net's cost does not depend on the values.
    """
    if runs < 1 or warmup < 0:
        raise MeasurementError(f"runs must be >= 1 and warmup >= 0, got {runs} and {warmup}")
    host_cores = os.cpu_count() or 1
    if threads > host_cores:
        # NOTE: more threads than cores oversubscribes the host. onnxruntime's spinning
        # workers then inflate p95 by milliseconds, well beyond what the device would show.
        logger.warning(
            "measuring %s with %d threads on a host with %d cores; p95 includes contention",
            onnx_path,
            threads,
            host_cores,
        )
    session = create_session(onnx_path, threads=threads)
    graph_input = session.get_inputs()[0]
    shape = tuple(dim if isinstance(dim, int) else -1 for dim in graph_input.shape)
    feed = {graph_input.name: sample_input(shape)}
    for _ in range(warmup):
        session.run(None, feed)
    timings = np.empty(runs, dtype=np.float64)
    for index in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        timings[index] = (time.perf_counter_ns() - start) / 1e6
    p50, p95, p99 = np.percentile(timings, [50, 95, 99])
    return LatencyStats(
        p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99), runs=runs, threads=threads
    )


def measure_p50_interleaved(
    paths: Sequence[str | Path], *, threads: int, rounds: int = 5, runs: int = 100
) -> list[float]:
    """Return each model's batch-1 p50 in ms, the least of ``rounds`` interleaved rounds.

    Every round times ``runs`` inferences of each model in turn, so a burst of load from
    other processes hits all models alike, and the least round median is the one least
    disturbed by it. Use it to compare models measured on a shared host.
    """
    if rounds < 1 or runs < 1:
        raise MeasurementError(f"rounds and runs must be >= 1, got {rounds} and {runs}")
    sessions, feeds = [], []
    for path in paths:
        session = create_session(path, threads=threads)
        graph_input = session.get_inputs()[0]
        shape = tuple(dim if isinstance(dim, int) else -1 for dim in graph_input.shape)
        feed = {graph_input.name: sample_input(shape)}
        for _ in range(max(runs // 10, 1)):
            session.run(None, feed)
        sessions.append(session)
        feeds.append(feed)
    best = [float("inf")] * len(sessions)
    timings = np.empty(runs, dtype=np.float64)
    for _ in range(rounds):
        for index, (session, feed) in enumerate(zip(sessions, feeds, strict=True)):
            for run in range(runs):
                start = time.perf_counter_ns()
                session.run(None, feed)
                timings[run] = (time.perf_counter_ns() - start) / 1e6
            best[index] = min(best[index], float(np.median(timings)))
    return best


# Runs in a fresh interpreter. The peak resident set size is VmHWM from /proc/self/status
# (kilobytes), the high-water mark of this process image. ru_maxrss is not used on Linux
# because exec keeps the parent's high-water mark: a child of a process that imported
# torch would report the parent's few hundred MB. Other systems fall back to ru_maxrss.
# The baseline is read after importing numpy and onnxruntime, so the difference is what
# loading the session and running one inference added at peak.
_MEMORY_PROBE = """
import json, resource, sys
import numpy as np
import onnxruntime as ort

def peak_kb():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    scale = 1024 if sys.platform == "darwin" else 1
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // scale

baseline = peak_kb()
path, threads = sys.argv[1], int(sys.argv[2])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
graph_input = session.get_inputs()[0]
shape = [dim if isinstance(dim, int) else 1 for dim in graph_input.shape]
session.run(None, {graph_input.name: np.zeros(shape, dtype=np.float32)})
print(json.dumps({"baseline_kb": baseline, "peak_kb": peak_kb()}))
"""


def measure_peak_memory(onnx_path: str | Path, *, threads: int) -> float:
    """Return the peak memory in MiB that an onnxruntime session of ``onnx_path`` adds.

    Measured in a child interpreter as the peak resident set size after loading the
    session and running one batch-1 inference, minus the peak right after importing numpy
    and onnxruntime. It counts the weights, the session's arenas and thread stacks that were
    touched, but not the interpreter and libraries, which the agent loads anyway.

    NOTE: the peak is a page-granular high-water mark, so results below about 1 MiB are
    noise, and the probe feeds float32 zeros, so it assumes a float32 input.
    """
    command = [sys.executable, "-c", _MEMORY_PROBE, str(onnx_path), str(threads)]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=_MEMORY_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise MeasurementError(
            f"memory probe of {onnx_path} timed out after {_MEMORY_TIMEOUT_S:.0f} s"
        ) from exc
    if completed.returncode != 0:
        raise MeasurementError(
            f"memory probe of {onnx_path} failed with exit code {completed.returncode}: "
            f"{completed.stderr.strip()[-500:]}"
        )
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    return max(figures["peak_kb"] - figures["baseline_kb"], 0) / 1024.0
