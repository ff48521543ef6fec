"""Export a torch model to ONNX and gate the result before anything else uses it.

The gate is the same for every variant: ``onnx.checker`` on the file, a load in
onnxruntime the way the agent loads it, and a numeric comparison with the source model on
validation inputs at recorded tolerances.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgefleet.compress.errors import ExportError, ModelLoadError, VerificationError
from edgefleet.compress.runtime import create_session, run_batched

__all__ = [
    "FP32_ATOL",
    "FP32_RTOL",
    "ONNX_OPSET",
    "VerificationResult",
    "check_onnx_file",
    "export_onnx",
    "onnx_opset",
    "verify_against_torch",
]

logger = logging.getLogger(__name__)

# Opset 18 is what the torch 2.13 exporter emits natively. Asking it for 17 adds a
# down-conversion that may fail. onnxruntime implements opset 18 from 1.14 on, which is
# older than the oldest runtime in the shipped device profiles (1.18).
ONNX_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Float32 kernels of torch and onnxruntime sum in different orders. On the digits CNN the
# outputs differ by about 6e-6, so 1e-4 flags a wrong graph without flagging rounding.
FP32_RTOL = 1e-4
FP32_ATOL = 1e-4


@dataclasses.dataclass(frozen=True)
class VerificationResult:
    """Outcome of a numeric comparison: the largest difference and the tolerances used."""

    max_abs_diff: float
    rtol: float
    atol: float
    samples: int

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def export_onnx(
    module: nn.Module, sample_input: np.ndarray, path: str | Path, *, opset: int = ONNX_OPSET
) -> Path:
    """Export ``module`` in eval mode to ``path`` with a dynamic batch dimension.

    Uses the torch.export-based exporter (``dynamo=True``), the default since torch 2.9;
    the TorchScript exporter is deprecated. Raises ``ExportError`` when export or
    ``onnx.checker`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    # A batch of 2 keeps torch.export from specialising the batch dimension to 1.
    example = torch.from_numpy(np.repeat(sample_input[:1], 2, axis=0))
    batch = torch.export.Dim("batch")
    # The exporter prints progress lines to stdout, which would corrupt `--json` output.
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), torch.no_grad(), warnings.catch_warnings():
            # torch 2.13 trips over its own deprecated pytree API while exporting.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                optimize=True,
                verbose=False,
            )
            program.save(str(path), external_data=False)
    except Exception as exc:  # the exporter raises many unrelated types; translate them all
        logger.debug("exporter output:\n%s", captured.getvalue())
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {exc}") from exc
    model = check_onnx_file(path, error=ExportError)
    exported_opset = _default_domain_opset(model)
    if exported_opset != opset:
        raise ExportError(
            f"exporter wrote opset {exported_opset} for {type(module).__name__}, not the "
            f"requested {opset}; use opset {ONNX_OPSET}, which it emits natively"
        )
    logger.debug("exported %s to %s (opset %d)", type(module).__name__, path, opset)
    return path


def check_onnx_file(
    path: str | Path, *, error: type[Exception] = ModelLoadError
) -> onnx.ModelProto:
    """Load ``path`` and run ``onnx.checker``; raises ``error`` naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise error(f"ONNX file not found: {path}")
    if path.stat().st_size == 0:
        raise error(f"{path} is empty, not an ONNX model; export the model again")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # protobuf DecodeError, ValidationError, InferenceError
        raise error(f"{path} is not a valid ONNX model: {exc}") from exc
    return model


@torch.no_grad()
def verify_against_torch(
    onnx_path: str | Path,
    module: nn.Module,
    inputs: np.ndarray,
    *,
    threads: int = 1,
    rtol: float = FP32_RTOL,
    atol: float = FP32_ATOL,
) -> VerificationResult:
    """Compare onnxruntime outputs of ``onnx_path`` with ``module`` on ``inputs``.

    Raises ``VerificationError`` with the largest difference when any element is outside
    ``atol + rtol * |expected|``.
    """
    module.eval()
    expected = module(torch.from_numpy(inputs)).numpy()
    actual = run_batched(create_session(onnx_path, threads=threads), inputs)
    if actual.shape != expected.shape:
        raise VerificationError(
            f"{onnx_path}: output shape {actual.shape} differs from the torch model's "
            f"{expected.shape}"
        )
    max_abs_diff = float(np.max(np.abs(actual - expected)))
    if not np.allclose(actual, expected, rtol=rtol, atol=atol):
        raise VerificationError(
            f"{onnx_path}: onnxruntime output differs from the torch model by up to "
            f"{max_abs_diff:.3g} on {len(inputs)} validation samples "
            f"(tolerance rtol={rtol:g}, atol={atol:g})"
        )
    return VerificationResult(max_abs_diff=max_abs_diff, rtol=rtol, atol=atol, samples=len(inputs))


def onnx_opset(path: str | Path) -> int:
    """Return the default-domain opset that the ONNX file at ``path`` imports."""
    return _default_domain_opset(onnx.load(str(path), load_external_data=False))


def _default_domain_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError("ONNX model imports no default-domain opset")
