"""Quantization of ONNX graphs with onnxruntime.quantization.

Three techniques, each a config with a registered handler:

- ``StaticQuantizationConfig``: int8 weights and activations in QDQ format, activation
  ranges calibrated on training samples (min-max, entropy or percentile), per-channel
  weights, and an accuracy-aware fallback that keeps the most sensitive nodes in float32.
- ``DynamicQuantizationConfig``: int8 weights, activations quantized at run time; for
  MatMul-heavy models such as transformers. The same fallback keeps the most sensitive
  quantized nodes in float32.
- ``Fp16WeightsConfig``: float16 weight storage (see ``convert_weights_to_fp16``).

``static_quantization_for(profile)`` derives the static settings from a device profile's
CPU flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization import (
    CalibrationMethod as OrtCalibrationMethod,
)
from onnxruntime.quantization.onnx_model import ONNXModel
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgefleet.compress.compat import make_compatible
from edgefleet.compress.configs import (
    CalibrationMethod,
    DynamicQuantizationConfig,
    Fp16WeightsConfig,
    QuantizedType,
    StaticQuantizationConfig,
)
from edgefleet.compress.errors import CompressError, ExportError, VerificationError
from edgefleet.compress.export import check_onnx_file
from edgefleet.compress.handlers import TechniqueContext, register_handler
from edgefleet.compress.runtime import create_session, run_batched
from edgefleet.profiles import CpuArch, DeviceProfile

__all__ = [
    "ArrayCalibrationReader",
    "NodeSensitivity",
    "convert_weights_to_fp16",
    "dynamic_node_sensitivities",
    "dynamic_quantization_for",
    "node_sensitivities",
    "quantize_onnx_dynamic",
    "quantize_onnx_static",
    "quantize_static_step",
    "static_quantization_for",
]

logger = logging.getLogger(__name__)

_CALIBRATION_METHODS = {
    CalibrationMethod.MINMAX: OrtCalibrationMethod.MinMax,
    CalibrationMethod.ENTROPY: OrtCalibrationMethod.Entropy,
    CalibrationMethod.PERCENTILE: OrtCalibrationMethod.Percentile,
}
_QUANT_TYPES = {QuantizedType.INT8: QuantType.QInt8, QuantizedType.UINT8: QuantType.QUInt8}
# Node types whose weights static quantization stores as int8; the fallback ranks these.
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_DYNAMIC_LINEAR_OPS = ("MatMul", "Gemm", "Attention")
# CPU flags (as in /proc/cpuinfo) of 8-bit dot-product instructions.
_X86_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# Calibration samples per batch for a model whose batch dimension is dynamic. A model
# with a fixed batch dimension is calibrated in batches of that size.
_CALIBRATION_BATCH = 32
# Validation samples used to score each node's sensitivity in the fallback.
_SENSITIVITY_SAMPLES = 256


class ArrayCalibrationReader(CalibrationDataReader):
    """Feed calibration samples to onnxruntime one batch at a time."""

    def __init__(
        self, input_name: str, samples: np.ndarray, *, batch_size: int = _CALIBRATION_BATCH
    ) -> None:
        self._input_name = input_name
        self._batches: Iterator[np.ndarray] = iter(
            [samples[start : start + batch_size] for start in range(0, len(samples), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def static_quantization_for(
    profile: DeviceProfile, base: StaticQuantizationConfig | None = None
) -> StaticQuantizationConfig:
    """Return ``base`` with activation type, weight type and range chosen for ``profile``.

    The choice follows the "Choosing parameters for CPU inference" guidance in
    ``onnxruntime.quantization.quantize_static`` (onnxruntime 1.32):

    - x86 without VNNI: uint8 activations, int8 weights, ``reduce_range=True``. Its
      U8S8 kernels add pairs of 8-bit products into 16 bits (VPMADDUBSW), which saturates
      with full-range weights; 7-bit weights cannot.
    - x86 with VNNI (``avx512_vnni``, ``avx_vnni`` or ``amx_int8``): uint8 activations,
      int8 weights, full range.
    - Arm: int8 activations and weights, full range, with or without the dot-product
      extension (``asimddp``).

    NOTE: onnxruntime documents no saturation on Arm without ``asimddp``, so those
    profiles keep full-range weights. That choice is not measured on such a device here.
    """
    base = base or StaticQuantizationConfig()
    if profile.cpu_arch is CpuArch.X86_64:
        has_vnni = bool(_X86_DOT_PRODUCT_FLAGS.intersection(profile.cpu_flags))
        return dataclasses.replace(
            base,
            activation_type=QuantizedType.UINT8,
            weight_type=QuantizedType.INT8,
            reduce_range=not has_vnni,
        )
    return dataclasses.replace(
        base,
        activation_type=QuantizedType.INT8,
        weight_type=QuantizedType.INT8,
        reduce_range=False,
    )


def quantize_onnx_static(
    source: Path,
    destination: Path,
    config: StaticQuantizationConfig,
    *,
    input_name: str,
    calibration_inputs: np.ndarray,
    nodes_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    preprocessed: bool = False,
) -> Path:
    """Write a QDQ int8 version of ``source`` to ``destination``, calibrated on inputs.

    Unless ``preprocessed``, ``quant_pre_process`` (symbolic shape inference and graph
    optimization) runs first, so that quantization works on the fused graph that
    onnxruntime executes. Node names in ``nodes_to_quantize`` and ``nodes_to_exclude``
    refer to that preprocessed graph (see ``preprocess_for_quantization``).
    """
    samples = calibration_inputs[: config.calibration_samples]
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as scratch:
        prepared = source if preprocessed else preprocess_for_quantization(source, Path(scratch))
        fixed_batch = _fixed_batch_size(prepared, input_name)
        if fixed_batch is not None:
            samples = _whole_batches(samples, fixed_batch)
        # The entropy and percentile calibrators print progress to stdout, which would
        # corrupt the CLI's --json output.
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    str(prepared),
                    str(destination),
                    ArrayCalibrationReader(
                        input_name, samples, batch_size=fixed_batch or _CALIBRATION_BATCH
                    ),
                    quant_format=QuantFormat.QDQ,
                    per_channel=config.per_channel,
                    reduce_range=config.reduce_range,
                    activation_type=_QUANT_TYPES[config.activation_type],
                    weight_type=_QUANT_TYPES[config.weight_type],
                    calibrate_method=_CALIBRATION_METHODS[config.calibration],
                    nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize else None,
                    nodes_to_exclude=list(nodes_to_exclude),
                )
        except Exception as exc:  # onnxruntime.quantization raises bare Exception types
            raise CompressError(f"static quantization of {source} failed: {exc}") from exc
    logger.debug("quantized %s with %d calibration samples", source, len(samples))
    return destination


def _fixed_batch_size(path: Path, input_name: str) -> int | None:
    """Return the first dimension of ``input_name`` in ``path`` when it is fixed, else None."""
    model = onnx.load(str(path), load_external_data=False)
    for graph_input in model.graph.input:
        if graph_input.name != input_name:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None


def _whole_batches(samples: np.ndarray, batch_size: int) -> np.ndarray:
    """Return ``samples`` cut to whole batches, or repeated up to one batch if fewer."""
    if len(samples) < batch_size:
        return np.resize(samples, (batch_size, *samples.shape[1:]))
    return samples[: len(samples) // batch_size * batch_size]


def preprocess_for_quantization(source: Path, directory: Path) -> Path:
    """Run ``quant_pre_process`` on ``source`` into ``directory`` and return the new path.

    A model stamped with a newer opset than this host's onnxruntime implements is first
    converted down (see ``compat.make_compatible``). Its float32 kernels may still load,
    but the quantizer stamps QuantizeLinear and DequantizeLinear with the model's opset,
    and onnxruntime then has no kernel for them.
    """
    source = _convert_to_host_opset(source, directory)
    prepared = directory / "prepared.onnx"
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        return prepared
    except Exception as exc:  # shape inference raises bare Exception types
        # Symbolic shape inference fails on some exported transformer graphs (for example
        # all-MiniLM-L6-v2 from torch.onnx's dynamo exporter, onnxruntime 1.32). ONNX
        # shape inference and graph optimization alone still prepare them.
        logger.info("symbolic shape inference of %s failed (%s); skipping it", source, exc)
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # shape inference raises bare Exception types
        raise CompressError(f"preparing {source} for quantization failed: {exc}") from exc
    return prepared


def _convert_to_host_opset(source: Path, directory: Path) -> Path:
    """Return ``source``, or a copy in ``directory`` at an opset this host's onnxruntime runs.

    Raises ``ExportError`` when ``onnx.version_converter`` cannot convert the graph.
    """
    converted = directory / "host_opset.onnx"
    compatibility = make_compatible(source, converted, onnxruntime.__version__)
    if not compatibility.converted:
        return source
    logger.info(
        "converted %s from opset %d to opset %d, the newest listed for onnxruntime %s, "
        "before quantizing",
        source,
        compatibility.source_opset,
        compatibility.opset,
        onnxruntime.__version__,
    )
    return converted


@dataclasses.dataclass(frozen=True)
class NodeSensitivity:
    """Output error of the model when only ``node`` is quantized (MSE over output variance)."""

    node: str
    op_type: str
    output_error: float


def node_sensitivities(
    prepared: Path,
    config: StaticQuantizationConfig,
    *,
    input_name: str,
    calibration_inputs: np.ndarray,
    inputs: np.ndarray,
    reference: np.ndarray,
) -> list[NodeSensitivity]:
    """Rank the weighted nodes of ``prepared`` by the error that quantizing each one alone adds.

    Each Conv, ConvTranspose, Gemm and MatMul node is quantized on its own and the model's
    outputs on ``inputs`` are compared with ``reference`` (the float model's outputs).
    Returns the nodes, most sensitive first. Costs one calibration per node.
    """

    def quantize_only(name: str, destination: Path) -> None:
        quantize_onnx_static(
            prepared,
            destination,
            config,
            input_name=input_name,
            calibration_inputs=calibration_inputs,
            nodes_to_quantize=[name],
            preprocessed=True,
        )

    return _rank_nodes(prepared, _WEIGHTED_OPS, quantize_only, inputs, reference)


def dynamic_node_sensitivities(
    prepared: Path,
    config: DynamicQuantizationConfig,
    *,
    inputs: np.ndarray,
    reference: np.ndarray,
) -> list[NodeSensitivity]:
    """Rank the nodes that ``config`` quantizes dynamically by the error each one alone adds.

    ``prepared`` is a graph from ``prepare_for_dynamic_quantization``. Each MatMul, Gemm and
    Attention node (and Conv or Gather when ``config`` includes them) is quantized on its
    own and the outputs on ``inputs`` are compared with ``reference``. Returns the nodes,
    most sensitive first.
    """

    def quantize_only(name: str, destination: Path) -> None:
        quantize_onnx_dynamic(
            prepared, destination, config, nodes_to_quantize=[name], preprocessed=True
        )

    return _rank_nodes(prepared, _dynamic_op_types(config), quantize_only, inputs, reference)


def _rank_nodes(
    prepared: Path,
    op_types: Collection[str],
    quantize_only: Callable[[str, Path], None],
    inputs: np.ndarray,
    reference: np.ndarray,
) -> list[NodeSensitivity]:
    """Quantize each node of ``op_types`` alone and sort by output error, largest first."""
    model = onnx.load(str(prepared), load_external_data=False)
    candidates = [
        (node.name, node.op_type) for node in model.graph.node if node.op_type in op_types
    ]
    spread = max(float(reference.var()), np.finfo(np.float32).tiny)
    ranked = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-sensitivity-") as scratch:
        for name, op_type in candidates:
            single = Path(scratch) / "single.onnx"
            quantize_only(name, single)
            outputs = run_batched(create_session(single, threads=1), inputs)
            error = float(np.mean((outputs - reference) ** 2)) / spread
            ranked.append(NodeSensitivity(node=name, op_type=op_type, output_error=error))
    ranked.sort(key=lambda item: item.output_error, reverse=True)
    return ranked


@register_handler(StaticQuantizationConfig)
def quantize_static_step(
    config: StaticQuantizationConfig, source: Path, destination: Path, context: TechniqueContext
) -> Path:
    """Quantize ``source`` into ``destination`` and gate it on validation accuracy.

    When accuracy drops by more than ``config.max_accuracy_drop``, the weighted nodes are
    ranked by ``node_sensitivities`` and kept in float32 one at a time, most sensitive
    first, up to ``config.max_fp32_nodes``. Raises ``VerificationError`` naming every node
    tried when no such variant is within the tolerance.
    """
    dataset = context.dataset
    parent = create_session(source, threads=1)
    input_name = parent.get_inputs()[0].name
    parent_logits = run_batched(parent, dataset.x_val)

    with tempfile.TemporaryDirectory(prefix="edgefleet-static-") as scratch:
        prepared = preprocess_for_quantization(source, Path(scratch))

        def quantize(excluded: Sequence[str]) -> np.ndarray:
            quantize_onnx_static(
                prepared,
                destination,
                config,
                input_name=input_name,
                calibration_inputs=dataset.x_train,
                nodes_to_exclude=excluded,
                preprocessed=True,
            )
            check_onnx_file(destination, error=ExportError)
            return run_batched(create_session(destination, threads=1), dataset.x_val)

        _quantize_within_tolerance(
            config,
            quantize,
            lambda: node_sensitivities(
                prepared,
                config,
                input_name=input_name,
                calibration_inputs=dataset.x_train,
                inputs=dataset.x_val[:_SENSITIVITY_SAMPLES],
                reference=parent_logits[:_SENSITIVITY_SAMPLES],
            ),
            labels=dataset.y_val,
            parent_logits=parent_logits,
            context=context,
            hint="Calibrate on more samples, try per-channel or entropy calibration, or "
            "raise max_fp32_nodes",
        )
    return destination


def _quantize_within_tolerance(
    config: StaticQuantizationConfig | DynamicQuantizationConfig,
    quantize: Callable[[Sequence[str]], np.ndarray],
    rank: Callable[[], Sequence[NodeSensitivity]],
    *,
    labels: np.ndarray,
    parent_logits: np.ndarray,
    context: TechniqueContext,
    hint: str,
) -> None:
    """Quantize, then keep the nodes ``rank`` returns in float32 one at a time until it fits.

    ``quantize`` writes the variant with the given nodes excluded and returns its logits.
    Raises ``VerificationError`` listing every attempt, followed by ``hint``, when the
    accuracy drop stays above ``config.max_accuracy_drop``.
    """
    parent_accuracy = _accuracy(parent_logits, labels)
    logits = quantize(())
    accuracy = _accuracy(logits, labels)
    context.progress(f"{config.describe()}: val accuracy {parent_accuracy:.4f} -> {accuracy:.4f}")
    excluded: list[str] = []
    attempts = [f"all nodes int8: {accuracy:.4f}"]
    if parent_accuracy - accuracy > config.max_accuracy_drop and config.max_fp32_nodes:
        for sensitivity in rank()[: config.max_fp32_nodes]:
            excluded.append(sensitivity.node)
            logits = quantize(excluded)
            accuracy = _accuracy(logits, labels)
            attempts.append(f"{', '.join(excluded)} in float32: {accuracy:.4f}")
            context.progress(
                f"kept {sensitivity.node} ({sensitivity.op_type}, output error "
                f"{sensitivity.output_error:.3g} alone) in float32: val accuracy {accuracy:.4f}"
            )
            if parent_accuracy - accuracy <= config.max_accuracy_drop:
                break

    agreement = float((logits.argmax(axis=1) == parent_logits.argmax(axis=1)).mean())
    context.details.update(
        max_abs_logit_diff=float(np.max(np.abs(logits - parent_logits))),
        top1_agreement=agreement,
        fp32_nodes=len(excluded),
    )
    if parent_accuracy - accuracy > config.max_accuracy_drop:
        raise VerificationError(
            f"{config.describe()} lowered validation accuracy from {parent_accuracy:.4f} to "
            f"{accuracy:.4f}, more than max_accuracy_drop={config.max_accuracy_drop}; "
            f"tried {'; '.join(attempts)}. {hint}"
        )
    if excluded:
        logger.info("kept %s in float32 to stay within the accuracy tolerance", excluded)


def dynamic_quantization_for(
    profile: DeviceProfile, base: DynamicQuantizationConfig | None = None
) -> DynamicQuantizationConfig:
    """Return ``base`` with int8 weights and ``reduce_range`` chosen for ``profile``.

    Dynamic quantization runs U8S8 kernels (uint8 activations, int8 weights). On x86
    without VNNI they add pairs of products into 16 bits, which can saturate, so those
    profiles get 7-bit weights (``reduce_range=True``), as for static quantization.
    """
    base = base or DynamicQuantizationConfig()
    has_vnni = bool(_X86_DOT_PRODUCT_FLAGS.intersection(profile.cpu_flags))
    return dataclasses.replace(
        base,
        weight_type=QuantizedType.INT8,
        reduce_range=profile.cpu_arch is CpuArch.X86_64 and not has_vnni,
    )


def prepare_for_dynamic_quantization(source: Path, directory: Path) -> Path:
    """Preprocess ``source`` into ``directory`` and rewrite each Gemm as MatMul and Add.

    ``quantize_dynamic`` makes the same rewrite itself (onnxruntime 1.32, in
    ``ONNXQuantizer.__init__``) and only then matches ``nodes_to_quantize`` and
    ``nodes_to_exclude``, against the new names (``<gemm>_MatMul``). Rewriting first
    gives the sensitivity ranking and the exclusions those same names.
    """
    prepared = preprocess_for_quantization(source, directory)
    model = ONNXModel(onnx.load(str(prepared)))
    model.replace_gemm_with_matmul()
    onnx.save(model.model, str(prepared))
    return prepared


def _dynamic_op_types(config: DynamicQuantizationConfig) -> list[str]:
    return [
        *_DYNAMIC_LINEAR_OPS,
        *(("Conv",) if config.include_conv else ()),
        *(("Gather",) if config.include_gather else ()),
    ]


def quantize_onnx_dynamic(
    source: Path,
    destination: Path,
    config: DynamicQuantizationConfig,
    *,
    nodes_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    preprocessed: bool = False,
) -> Path:
    """Write a dynamically quantized version of ``source`` to ``destination``.

    Unless ``preprocessed``, ``prepare_for_dynamic_quantization`` runs first, so node
    names in ``nodes_to_quantize`` and ``nodes_to_exclude`` refer to the graph it returns.
    Raises ``CompressError`` when onnxruntime fails.
    """
    with tempfile.TemporaryDirectory(prefix="edgefleet-dynamic-") as scratch:
        prepared = (
            source if preprocessed else prepare_for_dynamic_quantization(source, Path(scratch))
        )
        try:
            quantize_dynamic(
                str(prepared),
                str(destination),
                op_types_to_quantize=_dynamic_op_types(config),
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                weight_type=_QUANT_TYPES[config.weight_type],
                nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize else None,
                nodes_to_exclude=list(nodes_to_exclude),
            )
        except Exception as exc:  # onnxruntime.quantization raises bare Exception types
            raise CompressError(f"dynamic quantization of {source} failed: {exc}") from exc
    check_onnx_file(destination, error=ExportError)
    return destination


@register_handler(DynamicQuantizationConfig)
def quantize_dynamic_step(
    config: DynamicQuantizationConfig, source: Path, destination: Path, context: TechniqueContext
) -> Path:
    """Quantize weights of MatMul and Gemm nodes (and Conv, Gather if enabled) to int8.

    When validation accuracy drops by more than ``config.max_accuracy_drop``, the
    quantized nodes are ranked by ``dynamic_node_sensitivities`` and kept in float32 one at
    a time, most sensitive first, up to ``config.max_fp32_nodes``. Raises
    ``VerificationError`` naming every node tried when no such variant is within the
    tolerance.
    """
    dataset = context.dataset
    parent_logits = run_batched(create_session(source, threads=1), dataset.x_val)

    with tempfile.TemporaryDirectory(prefix="edgefleet-dynamic-step-") as scratch:
        prepared = prepare_for_dynamic_quantization(source, Path(scratch))

        def quantize(excluded: Sequence[str]) -> np.ndarray:
            quantize_onnx_dynamic(
                prepared, destination, config, nodes_to_exclude=excluded, preprocessed=True
            )
            return run_batched(create_session(destination, threads=1), dataset.x_val)

        _quantize_within_tolerance(
            config,
            quantize,
            lambda: dynamic_node_sensitivities(
                prepared,
                config,
                inputs=dataset.x_val[:_SENSITIVITY_SAMPLES],
                reference=parent_logits[:_SENSITIVITY_SAMPLES],
            ),
            labels=dataset.y_val,
            parent_logits=parent_logits,
            context=context,
            hint="Use per-channel weights, set reduce_range, or raise max_fp32_nodes",
        )
    return destination


def convert_weights_to_fp16(
    source: Path, destination: Path, *, min_elements: int = 16
) -> tuple[int, int]:
    """Store float32 initializers of ``source`` as float16 followed by a Cast to float32.

    Graph inputs, outputs and all compute stay float32. Initializers with fewer than
    ``min_elements`` elements, or with values beyond the float16 range (65504), stay
    float32. Returns ``(converted, kept)`` initializer counts.
    """
    model = onnx.load(str(source))
    graph = model.graph
    converted_nodes, kept = [], 0
    limit = float(np.finfo(np.float16).max)
    for tensor in list(graph.initializer):
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(tensor)
        if array.size < min_elements or np.max(np.abs(array), initial=0.0) > limit:
            kept += 1
            continue
        name = tensor.name
        half_name = f"{name}__fp16"
        tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float16), half_name))
        converted_nodes.append(
            helper.make_node(
                "Cast",
                [half_name],
                [name],
                name=f"{half_name}__cast",
                to=onnx.TensorProto.FLOAT,
            )
        )
    # The Casts produce the original names, so consumers need no change. They go first
    # so the graph stays topologically sorted.
    nodes = [*converted_nodes, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(destination))
    return len(converted_nodes), kept


@register_handler(Fp16WeightsConfig)
def quantize_fp16_step(
    config: Fp16WeightsConfig, source: Path, destination: Path, context: TechniqueContext
) -> Path:
    """Convert weights to float16 storage and gate the result on validation accuracy."""
    converted, kept = convert_weights_to_fp16(source, destination, min_elements=config.min_elements)
    check_onnx_file(destination, error=ExportError)
    context.details.update(fp16_initializers=converted, fp32_initializers=kept)
    _gate_accuracy(config.describe(), config.max_accuracy_drop, source, destination, context)
    return destination


def _gate_accuracy(
    label: str,
    max_drop: float,
    source: Path,
    destination: Path,
    context: TechniqueContext,
) -> None:
    dataset = context.dataset
    parent_logits = run_batched(create_session(source, threads=1), dataset.x_val)
    logits = run_batched(create_session(destination, threads=1), dataset.x_val)
    parent_accuracy = _accuracy(parent_logits, dataset.y_val)
    accuracy = _accuracy(logits, dataset.y_val)
    agreement = float((logits.argmax(axis=1) == parent_logits.argmax(axis=1)).mean())
    context.details.update(
        max_abs_logit_diff=float(np.max(np.abs(logits - parent_logits))),
        top1_agreement=agreement,
    )
    context.progress(f"{label}: val accuracy {parent_accuracy:.4f} -> {accuracy:.4f}")
    if parent_accuracy - accuracy > max_drop:
        raise VerificationError(
            f"{label} lowered validation accuracy from {parent_accuracy:.4f} to "
            f"{accuracy:.4f}, more than max_accuracy_drop={max_drop}"
        )


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())
