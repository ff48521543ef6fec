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
    from edgefleet.compress.compat import (
        OnnxSupport,
        OpsetCompatibility,
        make_compatible,
        onnx_support,
    )
    from edgefleet.compress.configs import (
        CalibrationMethod,
        DynamicQuantizationConfig,
        Fp16WeightsConfig,
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
    from edgefleet.compress.distillation import (
        DistillationConfig,
        distill,
        distillation_loss,
    )
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
    from edgefleet.compress.latency_model import (
        GraphFeatures,
        LatencyModel,
        MemoryModel,
        ServedLatencyTracker,
        correct,
        graph_features,
        leave_one_out,
    )
    from edgefleet.compress.measure import (
        LatencyStats,
        measure_latency,
        measure_p50_interleaved,
        measure_peak_memory,
    )
    from edgefleet.compress.mobilenet import (
        MobileNetSpec,
        MobileNetV2Family,
        StageSpec,
        mobilenet_v2_spec,
    )
    from edgefleet.compress.modelio import load_onnx_model, load_torch_model
    from edgefleet.compress.pipeline import Artifact, apply_recipe
    from edgefleet.compress.planner import (
        PlanReport,
        SourceFormat,
        build_ladder,
        choose_variant,
        default_recipes,
        plan,
        recipe_grid,
        tighter_recipes,
    )
    from edgefleet.compress.pruning import ChannelPruningConfig, prune_channels
    from edgefleet.compress.quantization import (
        NodeSensitivity,
        convert_weights_to_fp16,
        dynamic_node_sensitivities,
        dynamic_quantization_for,
        node_sensitivities,
        quantize_onnx_dynamic,
        static_quantization_for,
    )
    from edgefleet.compress.runtime import TensorSpecInfo
    from edgefleet.compress.search import (
        SearchCandidate,
        SearchedArchitectureConfig,
        SearchResult,
        SearchSpace,
        digits_search_space,
        pareto_front,
        search_architectures,
    )
    from edgefleet.compress.sparsity import (
        MagnitudeSparsityConfig,
        gzip_size,
        sparsify_magnitude,
        weight_sparsity,
    )
    from edgefleet.compress.transformer import (
        SentenceEncoder,
        TransformerPruningConfig,
        WordPieceTokenizer,
        distill_embeddings,
        distill_to_fewer_layers,
        export_sentence_encoder,
        load_sentence_encoder,
        prune_transformer,
    )
    from edgefleet.compress.variants import VariantReport

__all__ = [
    "Artifact",
    "ArtifactCache",
    "CalibrationMethod",
    "ChannelPruningConfig",
    "CompressError",
    "ConfigError",
    "Dataset",
    "DatasetError",
    "DigitsCNN",
    "DistillationConfig",
    "DynamicQuantizationConfig",
    "ExportError",
    "Fp16WeightsConfig",
    "GraphFeatures",
    "ImportanceCriterion",
    "LatencyModel",
    "LatencyStats",
    "MagnitudeSparsityConfig",
    "MeasurementError",
    "MemoryModel",
    "MobileNetSpec",
    "MobileNetV2Family",
    "ModelLoadError",
    "NodeSensitivity",
    "OnnxSupport",
    "OpsetCompatibility",
    "PlanReport",
    "QuantizedType",
    "Recipe",
    "SearchCandidate",
    "SearchResult",
    "SearchSpace",
    "SearchedArchitectureConfig",
    "SentenceEncoder",
    "ServedLatencyTracker",
    "SourceFormat",
    "Stage",
    "StageSpec",
    "StaticQuantizationConfig",
    "StructuredPruningConfig",
    "TechniqueConfig",
    "TechniqueContext",
    "TensorSpecInfo",
    "TransformerPruningConfig",
    "VariantReport",
    "VerificationError",
    "WordPieceTokenizer",
    "apply_recipe",
    "build_ladder",
    "choose_variant",
    "config_from_dict",
    "convert_weights_to_fp16",
    "correct",
    "default_recipes",
    "digits_dataset",
    "digits_search_space",
    "distill",
    "distill_embeddings",
    "distill_to_fewer_layers",
    "distillation_loss",
    "dynamic_node_sensitivities",
    "dynamic_quantization_for",
    "export_onnx",
    "export_sentence_encoder",
    "graph_features",
    "gzip_size",
    "leave_one_out",
    "load_dataset",
    "load_onnx_model",
    "load_sentence_encoder",
    "load_torch_model",
    "make_compatible",
    "measure_latency",
    "measure_p50_interleaved",
    "measure_peak_memory",
    "mobilenet_v2_spec",
    "node_sensitivities",
    "onnx_support",
    "pareto_front",
    "plan",
    "prune_channels",
    "prune_transformer",
    "quantize_onnx_dynamic",
    "recipe_grid",
    "register_config",
    "register_handler",
    "registered_configs",
    "save_dataset_npz",
    "search_architectures",
    "sparsify_magnitude",
    "static_quantization_for",
    "tighter_recipes",
    "train_digits_cnn",
    "verify_against_torch",
    "weight_sparsity",
]

_EXPORTS = {
    "Artifact": "pipeline",
    "ArtifactCache": "cache",
    "CalibrationMethod": "configs",
    "ChannelPruningConfig": "pruning",
    "CompressError": "errors",
    "ConfigError": "errors",
    "Dataset": "dataset",
    "DatasetError": "errors",
    "DigitsCNN": "digits",
    "DistillationConfig": "distillation",
    "DynamicQuantizationConfig": "configs",
    "ExportError": "errors",
    "Fp16WeightsConfig": "configs",
    "GraphFeatures": "latency_model",
    "ImportanceCriterion": "configs",
    "LatencyModel": "latency_model",
    "LatencyStats": "measure",
    "MagnitudeSparsityConfig": "sparsity",
    "MeasurementError": "errors",
    "MemoryModel": "latency_model",
    "MobileNetSpec": "mobilenet",
    "MobileNetV2Family": "mobilenet",
    "ModelLoadError": "errors",
    "NodeSensitivity": "quantization",
    "OnnxSupport": "compat",
    "OpsetCompatibility": "compat",
    "PlanReport": "planner",
    "QuantizedType": "configs",
    "Recipe": "configs",
    "SearchCandidate": "search",
    "SearchResult": "search",
    "SearchSpace": "search",
    "SearchedArchitectureConfig": "search",
    "SentenceEncoder": "transformer",
    "ServedLatencyTracker": "latency_model",
    "SourceFormat": "planner",
    "Stage": "configs",
    "StageSpec": "mobilenet",
    "StaticQuantizationConfig": "configs",
    "StructuredPruningConfig": "configs",
    "TechniqueConfig": "configs",
    "TechniqueContext": "handlers",
    "TensorSpecInfo": "runtime",
    "TransformerPruningConfig": "transformer",
    "VariantReport": "variants",
    "VerificationError": "errors",
    "WordPieceTokenizer": "transformer",
    "apply_recipe": "pipeline",
    "build_ladder": "planner",
    "choose_variant": "planner",
    "config_from_dict": "configs",
    "convert_weights_to_fp16": "quantization",
    "correct": "latency_model",
    "default_recipes": "planner",
    "digits_dataset": "digits",
    "digits_search_space": "search",
    "distill": "distillation",
    "distill_embeddings": "transformer",
    "distill_to_fewer_layers": "transformer",
    "distillation_loss": "distillation",
    "dynamic_node_sensitivities": "quantization",
    "dynamic_quantization_for": "quantization",
    "export_onnx": "export",
    "export_sentence_encoder": "transformer",
    "graph_features": "latency_model",
    "gzip_size": "sparsity",
    "leave_one_out": "latency_model",
    "load_dataset": "dataset",
    "load_onnx_model": "modelio",
    "load_sentence_encoder": "transformer",
    "load_torch_model": "modelio",
    "make_compatible": "compat",
    "measure_latency": "measure",
    "measure_p50_interleaved": "measure",
    "measure_peak_memory": "measure",
    "mobilenet_v2_spec": "mobilenet",
    "node_sensitivities": "quantization",
    "onnx_support": "compat",
    "pareto_front": "search",
    "plan": "planner",
    "prune_channels": "pruning",
    "prune_transformer": "transformer",
    "quantize_onnx_dynamic": "quantization",
    "recipe_grid": "planner",
    "register_config": "configs",
    "register_handler": "handlers",
    "registered_configs": "configs",
    "save_dataset_npz": "dataset",
    "search_architectures": "search",
    "sparsify_magnitude": "sparsity",
    "static_quantization_for": "quantization",
    "tighter_recipes": "planner",
    "train_digits_cnn": "digits",
    "verify_against_torch": "export",
    "weight_sparsity": "sparsity",
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
