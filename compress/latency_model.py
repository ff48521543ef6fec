"""Latency and peak-memory models of ONNX variants, with per-device correction.

``graph_features`` reads a graph's cost drivers: multiply-accumulates (MACs) per kind of
kernel (float32 or int8 convolution, float32 or int8 MatMul/Gemm, dynamic int8), weight
bytes and activation bytes at batch 1. ``LatencyModel`` is a non-negative least-squares
fit of measured host latency at one thread count on those features, so the planner can
rank candidates it has not measured, and ``leave_one_out`` reports its error honestly.
``MemoryModel`` does the same for the session's peak memory.

A prediction is for this host. ``correct`` turns it into the device's latency with the
agent's calibration benchmark (device time over host time of a reference model) and, once
the variant serves traffic, the ratio of served p95 latency to the corrected prediction::

    device_p95 = correct(model.predict(features), calibration_scale=2.7, served_ratio=1.1)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference
from scipy.optimize import nnls

from edgefleet.compress.errors import MeasurementError

__all__ = [
    "GraphFeatures",
    "LatencyModel",
    "MemoryModel",
    "ServedLatencyTracker",
    "correct",
    "graph_features",
    "leave_one_out",
]

_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_LINEAR_OPS = frozenset({"Gemm", "MatMul"})
_DYNAMIC_OPS = frozenset({"ConvInteger", "MatMulInteger"})
_FLOAT_BYTES = 4
# Served/predicted ratios outside this range mean a broken measurement (clock, wrong
# variant), not a slow device, so ``correct`` rejects them.
_MIN_SERVED_RATIO, _MAX_SERVED_RATIO = 0.1, 10.0


@dataclasses.dataclass(frozen=True)
class GraphFeatures:
    """Cost drivers of one ONNX graph at batch 1. MACs are in millions, bytes in MiB."""

    conv_fp32_mmacs: float
    conv_int8_mmacs: float
    linear_fp32_mmacs: float
    linear_int8_mmacs: float
    dynamic_int8_mmacs: float
    nodes: int
    weight_mib: float
    activation_mib: float

    def latency_vector(self) -> np.ndarray:
        """Return the regressors of ``LatencyModel``: a constant, MACs per kind, node count."""
        return np.array(
            [
                1.0,
                self.conv_fp32_mmacs,
                self.conv_int8_mmacs,
                self.linear_fp32_mmacs,
                self.linear_int8_mmacs,
                self.dynamic_int8_mmacs,
                float(self.nodes),
                self.activation_mib,
            ]
        )

    def memory_vector(self) -> np.ndarray:
        """Return the regressors of ``MemoryModel``: a constant, weight and activation MiB."""
        return np.array([1.0, self.weight_mib, self.activation_mib])

    @property
    def total_mmacs(self) -> float:
        return (
            self.conv_fp32_mmacs
            + self.conv_int8_mmacs
            + self.linear_fp32_mmacs
            + self.linear_int8_mmacs
            + self.dynamic_int8_mmacs
        )

    @property
    def conv_fraction(self) -> float:
        """Share of MACs in convolutions, 0..1; above 0.5 the model is convolutional."""
        total = self.total_mmacs
        conv = self.conv_fp32_mmacs + self.conv_int8_mmacs
        return conv / total if total > 0 else 0.0


def graph_features(path: str | Path) -> GraphFeatures:
    """Read the cost drivers of the ONNX file at ``path``; dynamic dimensions become 1.

    A Conv, Gemm or MatMul whose weight comes from a DequantizeLinear counts as int8,
    because onnxruntime fuses such QDQ groups into integer kernels. Raises
    ``MeasurementError`` when shape inference cannot give the shapes MACs need.
    """
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # InferenceError and protobuf errors
        raise MeasurementError(f"shape inference failed on {path}: {exc}") from exc
    shapes = _known_shapes(inferred)
    producers = {output: node for node in inferred.graph.node for output in node.output}
    initializers = {tensor.name: tensor for tensor in inferred.graph.initializer}

    macs = {"conv_fp32": 0.0, "conv_int8": 0.0, "linear_fp32": 0.0, "linear_int8": 0.0}
    dynamic = 0.0
    for node in inferred.graph.node:
        if node.op_type in _DYNAMIC_OPS:
            dynamic += _node_macs(node, shapes)
            continue
        if node.op_type in _CONV_OPS:
            kind = "conv"
        elif node.op_type in _LINEAR_OPS:
            kind = "linear"
        else:
            continue
        weight = producers.get(node.input[1]) if len(node.input) > 1 else None
        precision = (
            "int8" if weight is not None and weight.op_type == "DequantizeLinear" else "fp32"
        )
        macs[f"{kind}_{precision}"] += _node_macs(node, shapes)

    weight_bytes = sum(_tensor_bytes(tensor) for tensor in initializers.values())
    activation_bytes = sum(
        math.prod(shape) * _FLOAT_BYTES
        for name, shape in shapes.items()
        if name not in initializers
    )
    return GraphFeatures(
        conv_fp32_mmacs=macs["conv_fp32"] / 1e6,
        conv_int8_mmacs=macs["conv_int8"] / 1e6,
        linear_fp32_mmacs=macs["linear_fp32"] / 1e6,
        linear_int8_mmacs=macs["linear_int8"] / 1e6,
        dynamic_int8_mmacs=dynamic / 1e6,
        nodes=len(inferred.graph.node),
        weight_mib=weight_bytes / 2**20,
        activation_mib=activation_bytes / 2**20,
    )


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(dim.HasField("dim_value") for dim in dims):
            shapes[value.name] = tuple(dim.dim_value for dim in dims)
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    return shapes


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> float:
    output = shapes.get(node.output[0])
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if output is None or weight is None:
        return 0.0
    if node.op_type in ("Conv", "ConvInteger", "ConvTranspose"):
        # Each output element sums over (input channels / group) x kernel window, which is
        # the product of the weight's dims after the first (output channels).
        return float(math.prod(output) * math.prod(weight[1:]))
    # Gemm and MatMul: every output element sums over the shared dimension K.
    trans_b = any(attr.name == "transB" and attr.i for attr in node.attribute)
    if trans_b:
        k = weight[-1]
    elif len(weight) == 2:
        k = weight[0]
    else:
        k = weight[-2]
    return float(math.prod(output) * k)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return math.prod(tensor.dims) * itemsize


@dataclasses.dataclass(frozen=True)
class _LinearFit:
    coefficients: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray, targets: np.ndarray) -> _LinearFit:
        # Non-negative least squares on relative errors: dividing each row by its target
        # weighs a 10% miss on a fast variant like a 10% miss on a slow one, and no
        # feature can lower the cost, which keeps extrapolation sane.
        scale = 1.0 / np.maximum(targets, 1e-9)
        coefficients, _residual = nnls(rows * scale[:, None], targets * scale)
        return cls(coefficients)

    def predict(self, row: np.ndarray) -> float:
        return float(row @ self.coefficients)


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Host latency (ms) at one thread count as a non-negative sum of graph features."""

    threads: int
    fit_: _LinearFit

    @classmethod
    def fit(
        cls, features: Sequence[GraphFeatures], latency_ms: Sequence[float], *, threads: int
    ) -> LatencyModel:
        """Fit on variants measured on this host at ``threads``; needs two or more."""
        if len(features) != len(latency_ms) or len(features) < 2:
            raise ValueError(
                f"fit needs two or more (features, latency) pairs, got {len(features)} "
                f"features and {len(latency_ms)} latencies"
            )
        rows = np.stack([item.latency_vector() for item in features])
        return cls(threads=threads, fit_=_LinearFit.fit(rows, np.asarray(latency_ms, float)))

    def predict(self, features: GraphFeatures) -> float:
        """Return the predicted host latency in milliseconds."""
        return self.fit_.predict(features.latency_vector())


@dataclasses.dataclass(frozen=True)
class MemoryModel:
    """Session peak memory (MiB) as a non-negative sum of weight and activation bytes."""

    fit_: _LinearFit

    @classmethod
    def fit(cls, features: Sequence[GraphFeatures], peak_mib: Sequence[float]) -> MemoryModel:
        """Fit on measured peaks; needs two or more variants."""
        if len(features) != len(peak_mib) or len(features) < 2:
            raise ValueError(
                f"fit needs two or more (features, peak) pairs, got {len(features)} and "
                f"{len(peak_mib)}"
            )
        rows = np.stack([item.memory_vector() for item in features])
        return cls(fit_=_LinearFit.fit(rows, np.asarray(peak_mib, float)))

    def predict(self, features: GraphFeatures) -> float:
        """Return the predicted peak memory in MiB."""
        return self.fit_.predict(features.memory_vector())


def leave_one_out(
    features: Sequence[GraphFeatures], measured: Sequence[float], *, memory: bool = False
) -> np.ndarray:
    """Return each variant's relative error (predicted / measured - 1) when left out of the fit."""
    errors = []
    for index in range(len(features)):
        train = [item for position, item in enumerate(features) if position != index]
        targets = [value for position, value in enumerate(measured) if position != index]
        model: LatencyModel | MemoryModel = (
            MemoryModel.fit(train, targets)
            if memory
            else LatencyModel.fit(train, targets, threads=1)
        )
        errors.append(model.predict(features[index]) / measured[index] - 1.0)
    return np.asarray(errors)


def correct(
    predicted_ms: float, *, calibration_scale: float, served_ratio: float | None = None
) -> float:
    """Return the device latency for a host prediction ``predicted_ms``.

    ``calibration_scale`` is device time over host time of the agent's calibration
    benchmark (the planner's ``latency_scale``). ``served_ratio`` is served p95 over the
    corrected prediction for a variant the device already runs (see
    ``ServedLatencyTracker``). It absorbs what the benchmark misses, such as thermal
    throttling or other load on the device. Raises ``ValueError`` for non-positive or
    implausible factors.
    """
    if not math.isfinite(calibration_scale) or calibration_scale <= 0:
        raise ValueError(
            f"calibration_scale must be positive and finite, got {calibration_scale!r}"
        )
    corrected = predicted_ms * calibration_scale
    if served_ratio is None:
        return corrected
    if not _MIN_SERVED_RATIO <= served_ratio <= _MAX_SERVED_RATIO:
        raise ValueError(
            f"served_ratio {served_ratio!r} is outside [{_MIN_SERVED_RATIO}, "
            f"{_MAX_SERVED_RATIO}]; check the telemetry before trusting it"
        )
    return corrected * served_ratio


@dataclasses.dataclass
class ServedLatencyTracker:
    """Exponentially weighted served/predicted latency ratio of one device.

    Feed it each telemetry sample's served p95 with the corrected prediction for the
    variant the device runs; ``ratio`` is the ``served_ratio`` for ``correct``.
    """

    smoothing: float = 0.2
    ratio: float | None = None

    def update(self, served_p95_ms: float, predicted_p95_ms: float) -> float:
        """Fold one sample in and return the new ratio."""
        if served_p95_ms <= 0 or predicted_p95_ms <= 0:
            raise ValueError(
                f"latencies must be positive, got served {served_p95_ms!r} and predicted "
                f"{predicted_p95_ms!r}"
            )
        sample = min(max(served_p95_ms / predicted_p95_ms, _MIN_SERVED_RATIO), _MAX_SERVED_RATIO)
        self.ratio = (
            sample
            if self.ratio is None
            else (1 - self.smoothing) * self.ratio + self.smoothing * sample
        )
        return self.ratio
