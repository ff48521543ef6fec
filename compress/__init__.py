"""edgefleet.compress: compress one model per device profile and verify every variant.

The entry points are ``plan`` (every candidate recipe for one profile, measured, with the
ladder and the chosen variant) and ``apply_recipe`` (one recipe). Techniques are frozen
configs (``StructuredPruningConfig``, ``StaticQuantizationConfig``) dispatched to
registered handlers. Errors are described in ``edgefleet.compress.errors``.

Names are imported from their modules on first use, so ``edgefleet.compress.cli``
(and the root ``edgefleet`` command) loads without torch, onnx or onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.compress.cache import ArtifactCache
    from edgefleet.compress.configs import (
        CalibrationMethod,
        ImportanceCriterion,
        QuantizedType,
        Recipe,
        Stage,
        StaticQuantizationConfig,
        StructuredPruningConfig,
        TechniqueConfig,
        config_from_dict,
        register_config,
        registered_configs,
    )
    from edgefleet.compress.dataset import Dataset, load_dataset, save_dataset_npz
    from edgefleet.compress.digits import DigitsCNN, digits_dataset, train_digits_cnn
    from edgefleet.compress.errors import (
        CompressError,
        ConfigError,
        DatasetError,
        ExportError,
        MeasurementError,
        ModelLoadError,
        VerificationError,
    )
    from edgefleet.compress.export import export_onnx, verify_against_torch
    from edgefleet.compress.handlers import TechniqueContext, register_handler
    from edgefleet.compress.measure import LatencyStats, measure_latency, measure_peak_memory
    from edgefleet.compress.modelio import load_onnx_model, load_torch_model
    from edgefleet.compress.pipeline import Artifact, apply_recipe
    from edgefleet.compress.planner import (
        PlanReport,
        SourceFormat,
        build_ladder,
        choose_variant,
        default_recipes,
        plan,
        tighter_recipes,
    )
    from edgefleet.compress.runtime import TensorSpecInfo
    from edgefleet.compress.variants import VariantReport

__all__ = [
    "Artifact",
    "ArtifactCache",
    "CalibrationMethod",
    "CompressError",
    "ConfigError",
    "Dataset",
    "DatasetError",
    "DigitsCNN",
    "ExportError",
    "ImportanceCriterion",
    "LatencyStats",
    "MeasurementError",
    "ModelLoadError",
    "PlanReport",
    "QuantizedType",
    "Recipe",
    "SourceFormat",
    "Stage",
    "StaticQuantizationConfig",
    "StructuredPruningConfig",
    "TechniqueConfig",
    "TechniqueContext",
    "TensorSpecInfo",
    "VariantReport",
    "VerificationError",
    "apply_recipe",
    "build_ladder",
    "choose_variant",
    "config_from_dict",
    "default_recipes",
    "digits_dataset",
    "export_onnx",
    "load_dataset",
    "load_onnx_model",
    "load_torch_model",
    "measure_latency",
    "measure_peak_memory",
    "plan",
    "register_config",
    "register_handler",
    "registered_configs",
    "save_dataset_npz",
    "tighter_recipes",
    "train_digits_cnn",
    "verify_against_torch",
]

_EXPORTS = {
    "Artifact": "pipeline",
    "ArtifactCache": "cache",
    "CalibrationMethod": "configs",
    "CompressError": "errors",
    "ConfigError": "errors",
    "Dataset": "dataset",
    "DatasetError": "errors",
    "DigitsCNN": "digits",
    "ExportError": "errors",
    "ImportanceCriterion": "configs",
    "LatencyStats": "measure",
    "MeasurementError": "errors",
    "ModelLoadError": "errors",
    "PlanReport": "planner",
    "QuantizedType": "configs",
    "Recipe": "configs",
    "SourceFormat": "planner",
    "Stage": "configs",
    "StaticQuantizationConfig": "configs",
    "StructuredPruningConfig": "configs",
    "TechniqueConfig": "configs",
    "TechniqueContext": "handlers",
    "TensorSpecInfo": "runtime",
    "VariantReport": "variants",
    "VerificationError": "errors",
    "apply_recipe": "pipeline",
    "build_ladder": "planner",
    "choose_variant": "planner",
    "config_from_dict": "configs",
    "default_recipes": "planner",
    "digits_dataset": "digits",
    "export_onnx": "export",
    "load_dataset": "dataset",
    "load_onnx_model": "modelio",
    "load_torch_model": "modelio",
    "measure_latency": "measure",
    "measure_peak_memory": "measure",
    "plan": "planner",
    "register_config": "configs",
    "register_handler": "handlers",
    "registered_configs": "configs",
    "save_dataset_npz": "dataset",
    "tighter_recipes": "planner",
    "train_digits_cnn": "digits",
    "verify_against_torch": "export",
}


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
