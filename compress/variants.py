"""``VariantReport``: one compressed artifact measured against one device profile."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgefleet.compress.cache import file_sha256
from edgefleet.compress.compat import OpsetCompatibility, make_compatible
from edgefleet.compress.configs import Recipe
from edgefleet.compress.dataset import Dataset
from edgefleet.compress.errors import VerificationError
from edgefleet.compress.export import FP32_ATOL, FP32_RTOL, check_onnx_file, onnx_opset
from edgefleet.compress.measure import measure_latency, measure_peak_memory
from edgefleet.compress.pipeline import Artifact, copy_artifact
from edgefleet.compress.runtime import TensorSpecInfo, create_session, run_batched, tensor_specs
from edgefleet.profiles import DeviceProfile

__all__ = ["SELF_TEST_SAMPLES", "VariantReport", "measure_variant"]

# Validation samples the agent runs after loading a variant and compares with the
# expected outputs recorded here.
SELF_TEST_SAMPLES = 8
# Integer kernels differ between CPUs (x86 VNNI, Arm dot-product, plain SIMD) in rounding
# of requantization, so the int8 self-test allows a relative error of 1e-3 plus one
# quantization step of the output tensor.
INT8_RTOL = 1e-3
# Tolerances are at least this multiple of the difference measured on this host between
# one thread and the profile's thread count.
_THREAD_DIFF_MARGIN = 10.0


@dataclasses.dataclass(frozen=True, eq=False)
class VariantReport:
    """Measurements of one variant for one profile, plus the agent's self-test data."""

    variant_id: str
    recipe: Recipe
    onnx_path: Path
    sha256: str
    size_bytes: int
    accuracy: float
    host_latency_p95_ms: float
    latency_p95_ms: float
    peak_memory_mb: float
    meets_budget: bool
    opset: int
    inputs: tuple[TensorSpecInfo, ...]
    outputs: tuple[TensorSpecInfo, ...]
    self_test_input: np.ndarray
    self_test_expected: np.ndarray
    rtol: float
    atol: float
    host_latency_p50_ms: float = 0.0
    # Fraction of validation samples whose top-1 class equals the fp32 baseline's.
    agreement: float = 1.0
    # Mean squared difference between this variant's outputs and the fp32 baseline's on
    # the validation split, divided by the variance of the baseline's outputs (0 for fp32).
    output_error: float = 0.0
    # First output per validation sample; kept out of ``to_dict``.
    outputs_val: np.ndarray | None = dataclasses.field(default=None, repr=False)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Opset and IR version before and after conversion for the profile's onnxruntime.
    compatibility: OpsetCompatibility | None = None

    @property
    def name(self) -> str:
        """Human-readable recipe label, ``fp32`` for the baseline."""
        return self.recipe.name

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-safe values; the self-test arrays are left out."""
        return {
            "variant_id": self.variant_id,
            "name": self.name,
            "recipe": self.recipe.to_list(),
            "onnx_path": str(self.onnx_path),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "accuracy": self.accuracy,
            "agreement": self.agreement,
            "output_error": self.output_error,
            "host_latency_p50_ms": self.host_latency_p50_ms,
            "host_latency_p95_ms": self.host_latency_p95_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "peak_memory_mb": self.peak_memory_mb,
            "meets_budget": self.meets_budget,
            "opset": self.opset,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "rtol": self.rtol,
            "atol": self.atol,
            "details": dict(self.details),
            "compatibility": self.compatibility.to_dict() if self.compatibility else None,
        }


def measure_variant(
    artifact: Artifact,
    *,
    dataset: Dataset,
    profile: DeviceProfile,
    out_dir: Path,
    latency_scale: float,
    latency_runs: int = 200,
    reference_outputs: np.ndarray | None = None,
) -> VariantReport:
    """Copy ``artifact`` to ``out_dir`` and measure it at the profile's thread count.

    ``reference_outputs`` are the fp32 baseline's outputs on the validation split; the
    report's ``agreement`` and ``output_error`` compare against them (1.0 and 0.0 when no
    reference is given, as for the baseline itself).
    """
    path, sha256, compatibility = _compatible_copy(artifact, profile, out_dir, dataset)
    variant_id = sha256[:16]
    threads = profile.inference_threads

    latency = measure_latency(path, threads=threads, runs=latency_runs)
    peak_memory_mb = measure_peak_memory(path, threads=threads)
    latency_p95_ms = latency.p95_ms * latency_scale

    session = create_session(path, threads=threads)
    inputs, outputs = tensor_specs(session)
    self_test_input = dataset.x_val[:SELF_TEST_SAMPLES].copy()
    expected = run_batched(session, self_test_input)
    rtol, atol = _self_test_tolerance(path, self_test_input, expected, artifact.quantized)
    outputs_val = run_batched(session, dataset.x_val)
    agreement, output_error = 1.0, 0.0
    if reference_outputs is not None:
        agreement = float((outputs_val.argmax(axis=1) == reference_outputs.argmax(axis=1)).mean())
        spread = max(float(reference_outputs.var()), np.finfo(np.float32).tiny)
        output_error = float(np.mean((outputs_val - reference_outputs) ** 2)) / spread

    return VariantReport(
        variant_id=variant_id,
        recipe=artifact.recipe,
        onnx_path=path,
        sha256=sha256,
        size_bytes=path.stat().st_size,
        accuracy=artifact.accuracy,
        host_latency_p95_ms=latency.p95_ms,
        latency_p95_ms=latency_p95_ms,
        peak_memory_mb=peak_memory_mb,
        meets_budget=(
            latency_p95_ms <= profile.latency_budget_ms
            and peak_memory_mb <= profile.model_memory_budget_mb
        ),
        opset=onnx_opset(path),
        inputs=inputs,
        outputs=outputs,
        self_test_input=self_test_input,
        self_test_expected=expected,
        rtol=rtol,
        atol=atol,
        host_latency_p50_ms=latency.p50_ms,
        agreement=agreement,
        output_error=output_error,
        outputs_val=outputs_val,
        details=dict(artifact.details),
        compatibility=compatibility,
    )


def _compatible_copy(
    artifact: Artifact, profile: DeviceProfile, out_dir: Path, dataset: Dataset
) -> tuple[Path, str, OpsetCompatibility]:
    """Copy ``artifact`` to ``out_dir`` in a form the profile's onnxruntime loads.

    A converted file is a new artifact with its own sha256. It must pass ``onnx.checker``,
    load in onnxruntime and give the same outputs as the artifact on validation samples
    (float32 tolerances: conversion changes operator versions, not arithmetic).
    """
    converted = out_dir / f"{artifact.sha256[:16]}.converted.onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    compatibility = make_compatible(artifact.path, converted, profile.onnxruntime_version)
    if not compatibility.converted:
        path = copy_artifact(artifact, out_dir, f"{artifact.sha256[:16]}.onnx")
        return path, artifact.sha256, compatibility

    check_onnx_file(converted)
    samples = dataset.x_val[: SELF_TEST_SAMPLES * 8]
    expected = run_batched(create_session(artifact.path, threads=1), samples)
    actual = run_batched(create_session(converted, threads=1), samples)
    if not np.allclose(actual, expected, rtol=FP32_RTOL, atol=FP32_ATOL):
        raise VerificationError(
            f"converting {artifact.recipe.name} to opset {compatibility.opset} for onnxruntime "
            f"{profile.onnxruntime_version} changed its outputs by up to "
            f"{float(np.max(np.abs(actual - expected))):.3g}"
        )
    sha256 = file_sha256(converted)
    path = out_dir / f"{sha256[:16]}.onnx"
    converted.replace(path)
    return path, sha256, compatibility


def _self_test_tolerance(
    path: Path, inputs: np.ndarray, expected: np.ndarray, quantized: bool
) -> tuple[float, float]:
    # The expected outputs come from onnxruntime on this exact file, so the agent's check
    # only has to absorb kernel and thread-count differences, never export error.
    single_thread = run_batched(create_session(path, threads=1), inputs)
    thread_diff = float(np.max(np.abs(single_thread - expected)))
    if not quantized:
        return FP32_RTOL, max(FP32_ATOL, _THREAD_DIFF_MARGIN * thread_diff)
    scale = float(np.max(np.abs(expected)))
    atol = max(
        INT8_RTOL * scale, _output_quantization_step(path), _THREAD_DIFF_MARGIN * thread_diff
    )
    return INT8_RTOL, atol


def _output_quantization_step(path: Path) -> float:
    """Return the largest scale of a DequantizeLinear that produces a graph output, or 0."""
    model = onnx.load(str(path))
    graph_outputs = {output.name for output in model.graph.output}
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    step = 0.0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or not graph_outputs.intersection(node.output):
            continue
        scale = initializers.get(node.input[1])
        if scale is not None:
            step = max(step, float(np.max(numpy_helper.to_array(scale))))
    return step
