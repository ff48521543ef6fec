"""Exceptions raised by ``edgefleet.compress``.

Torch, torch-pruning, onnx and onnxruntime errors are translated into these where they
enter the library, so callers catch one tree::

    EdgefleetError
    ├── InvalidInputError
    │   ├── ModelLoadError      a model file, factory or weights file cannot be loaded
    │   ├── DatasetError        an evaluation dataset is missing keys or has wrong shapes
    │   └── ConfigError         a compression config or recipe is invalid
    └── CompressError           compression failed on valid input
        ├── ExportError         torch.onnx.export or onnx.checker failed
        ├── VerificationError   a variant's outputs or accuracy are outside the recorded tolerance
        └── MeasurementError    latency or memory could not be measured

``InvalidInputError`` is a ``ValueError``: the caller can fix the input and retry.
"""

from __future__ import annotations

from edgefleet.errors import EdgefleetError, InvalidInputError

__all__ = [
    "CompressError",
    "ConfigError",
    "DatasetError",
    "ExportError",
    "MeasurementError",
    "ModelLoadError",
    "VerificationError",
]


class ModelLoadError(InvalidInputError):
    """A model file, factory or weights file cannot be loaded."""


class DatasetError(InvalidInputError):
    """An evaluation dataset is missing keys or has the wrong shapes or dtypes."""


class ConfigError(InvalidInputError):
    """A compression config or recipe is invalid."""


class CompressError(EdgefleetError):
    """Compression failed on valid input."""


class ExportError(CompressError):
    """Exporting a torch model to ONNX, or checking the exported file, failed."""


class VerificationError(CompressError):
    """A variant's outputs or accuracy fall outside the recorded tolerance."""


class MeasurementError(CompressError):
    """Latency or peak memory of a variant could not be measured."""
