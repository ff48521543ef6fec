"""onnxruntime sessions configured the way the device agent loads a variant."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgefleet.compress.errors import ModelLoadError

__all__ = ["TensorSpecInfo", "create_session", "onnx_accuracy", "run_batched", "tensor_specs"]

# onnxruntime type strings ("tensor(float)") to numpy dtype names.
_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
}


@dataclasses.dataclass(frozen=True)
class TensorSpecInfo:
    """Name, numpy dtype name and shape of a graph input or output; -1 marks a dynamic dim."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def create_session(path: str | Path, *, threads: int) -> ort.InferenceSession:
    """Load ``path`` on the CPU provider with ``threads`` intra-op threads, run sequentially.

    Raises ``ModelLoadError`` when onnxruntime rejects the file.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only; warnings about unused initializers are noise
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # one pybind class per status code (Fail, NotImplemented, ...)
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc


def tensor_specs(session: ort.InferenceSession) -> tuple[tuple[TensorSpecInfo, ...], ...]:
    """Return ``(inputs, outputs)`` of ``session`` as ``TensorSpecInfo`` tuples."""

    def describe(args: list[ort.NodeArg]) -> tuple[TensorSpecInfo, ...]:
        return tuple(
            TensorSpecInfo(
                name=arg.name,
                dtype=_ORT_TO_NUMPY.get(arg.type, arg.type),
                shape=tuple(dim if isinstance(dim, int) else -1 for dim in arg.shape),
            )
            for arg in args
        )

    return describe(session.get_inputs()), describe(session.get_outputs())


def run_batched(
    session: ort.InferenceSession, inputs: np.ndarray, *, batch_size: int = 256
) -> np.ndarray:
    """Run the first output of ``session`` over ``inputs`` in batches and concatenate.

    A graph whose batch dimension is fixed gets batches of exactly that size. The last
    batch is padded with copies of its first sample, and the padding is dropped again.
    """
    graph_input = session.get_inputs()[0]
    fixed_batch = graph_input.shape[0] if isinstance(graph_input.shape[0], int) else None
    step = fixed_batch or batch_size
    outputs = []
    for start in range(0, len(inputs), step):
        chunk = inputs[start : start + step]
        count = len(chunk)
        if fixed_batch is not None and count < fixed_batch:
            padding = np.repeat(chunk[:1], fixed_batch - count, axis=0)
            chunk = np.concatenate([chunk, padding])
        result = session.run(None, {graph_input.name: chunk})[0]
        outputs.append(result[:count])
    return np.concatenate(outputs)


def onnx_accuracy(session: ort.InferenceSession, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Return the top-1 accuracy (fraction 0..1) of ``session`` on ``inputs``."""
    logits = run_batched(session, inputs)
    return float((logits.argmax(axis=1) == labels).mean())
