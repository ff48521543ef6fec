"""Static int8 quantization of ONNX graphs with onnxruntime.quantization (QDQ format)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization import (
    CalibrationMethod as OrtCalibrationMethod,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgefleet.compress.configs import CalibrationMethod, QuantizedType, StaticQuantizationConfig
from edgefleet.compress.errors import CompressError, ExportError, VerificationError
from edgefleet.compress.export import check_onnx_file
from edgefleet.compress.handlers import TechniqueContext, register_handler
from edgefleet.compress.runtime import create_session, run_batched

__all__ = ["ArrayCalibrationReader", "quantize_onnx_static", "quantize_static_step"]

logger = logging.getLogger(__name__)

_CALIBRATION_METHODS = {
    CalibrationMethod.MINMAX: OrtCalibrationMethod.MinMax,
    CalibrationMethod.ENTROPY: OrtCalibrationMethod.Entropy,
    CalibrationMethod.PERCENTILE: OrtCalibrationMethod.Percentile,
}
_QUANT_TYPES = {QuantizedType.INT8: QuantType.QInt8, QuantizedType.UINT8: QuantType.QUInt8}


class ArrayCalibrationReader(CalibrationDataReader):
    """Feed calibration samples to onnxruntime one batch at a time."""

    def __init__(self, input_name: str, samples: np.ndarray, *, batch_size: int = 32) -> None:
        self._input_name = input_name
        self._batches: Iterator[np.ndarray] = iter(
            [samples[start : start + batch_size] for start in range(0, len(samples), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def quantize_onnx_static(
    source: Path,
    destination: Path,
    config: StaticQuantizationConfig,
    *,
    input_name: str,
    calibration_inputs: np.ndarray,
) -> Path:
    """Write a QDQ int8 version of ``source`` to ``destination``, calibrated on inputs.

    ``quant_pre_process`` (symbolic shape inference and graph optimization) runs first,
    so that quantization works on the fused graph that onnxruntime executes.
    """
    samples = calibration_inputs[: config.calibration_samples]
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
            quantize_static(
                str(prepared),
                str(destination),
                ArrayCalibrationReader(input_name, samples),
                quant_format=QuantFormat.QDQ,
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                activation_type=_QUANT_TYPES[config.activation_type],
                weight_type=QuantType.QInt8,
                calibrate_method=_CALIBRATION_METHODS[config.calibration],
            )
        except Exception as exc:  # onnxruntime.quantization raises bare Exception types
            raise CompressError(f"static quantization of {source} failed: {exc}") from exc
    logger.debug("quantized %s with %d calibration samples", source, len(samples))
    return destination


@register_handler(StaticQuantizationConfig)
def quantize_static_step(
    config: StaticQuantizationConfig, source: Path, destination: Path, context: TechniqueContext
) -> Path:
    """Quantize ``source`` into ``destination`` and gate it on validation accuracy.

    Raises ``VerificationError`` when accuracy drops by more than
    ``config.max_accuracy_drop`` below the source model's.
    """
    dataset = context.dataset
    parent = create_session(source, threads=1)
    input_name = parent.get_inputs()[0].name
    quantize_onnx_static(
        source, destination, config, input_name=input_name, calibration_inputs=dataset.x_train
    )
    check_onnx_file(destination, error=ExportError)

    parent_logits = run_batched(parent, dataset.x_val)
    logits = run_batched(create_session(destination, threads=1), dataset.x_val)
    accuracy = float((logits.argmax(axis=1) == dataset.y_val).mean())
    parent_accuracy = float((parent_logits.argmax(axis=1) == dataset.y_val).mean())
    agreement = float((logits.argmax(axis=1) == parent_logits.argmax(axis=1)).mean())
    context.details.update(
        max_abs_logit_diff=float(np.max(np.abs(logits - parent_logits))),
        top1_agreement=agreement,
    )
    context.progress(
        f"quantized to int8: val accuracy {parent_accuracy:.4f} -> {accuracy:.4f}, "
        f"top-1 agreement with the float model {agreement:.4f}"
    )
    if parent_accuracy - accuracy > config.max_accuracy_drop:
        raise VerificationError(
            f"{config.describe()} lowered validation accuracy from {parent_accuracy:.4f} to "
            f"{accuracy:.4f}, more than max_accuracy_drop={config.max_accuracy_drop}; "
            "calibrate on more samples or try per-channel or entropy calibration"
        )
    return destination
