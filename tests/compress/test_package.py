from __future__ import annotations

import importlib
import pkgutil

import edgefleet.compress as compress


def test_all_is_sorted_and_resolves():
    assert compress.__all__ == sorted(compress.__all__)
    for name in compress.__all__:
        assert getattr(compress, name) is not None


def test_all_lists_every_public_name_of_submodules():
    exported = set(compress.__all__)
    missing = []
    for info in pkgutil.iter_modules(compress.__path__):
        if info.name in {"cli"}:
            continue
        module = importlib.import_module(f"edgefleet.compress.{info.name}")
        missing += [
            f"{info.name}.{name}"
            for name in getattr(module, "__all__", [])
            if name not in exported and not _is_internal_detail(info.name, name)
        ]
    assert not missing, f"public names missing from edgefleet.compress.__all__: {missing}"


def _is_internal_detail(module: str, name: str) -> bool:
    # Helpers that only the modules themselves and advanced callers use.
    return (module, name) in {
        ("cache", "CachedArtifact"),
        ("cache", "cache_key"),
        ("cache", "file_sha256"),
        ("dataset", "DATASET_KEYS"),
        ("dataset", "SUPPORTED_MODELS"),
        ("export", "FP32_ATOL"),
        ("export", "FP32_RTOL"),
        ("export", "ONNX_OPSET"),
        ("export", "VerificationResult"),
        ("export", "check_onnx_file"),
        ("export", "onnx_opset"),
        ("handlers", "handler_for"),
        ("measure", "sample_input"),
        ("modelio", "module_digest"),
        ("pipeline", "source_digest"),
        ("planner", "DEFAULT_PRUNING_RATIOS"),
        ("pruning", "count_macs_and_params"),
        ("pruning", "prune_structured"),
        ("quantization", "ArrayCalibrationReader"),
        ("quantization", "quantize_onnx_static"),
        ("quantization", "quantize_static_step"),
        ("runtime", "create_session"),
        ("runtime", "onnx_accuracy"),
        ("runtime", "run_batched"),
        ("runtime", "tensor_specs"),
        ("training", "distillation_loss"),
        ("training", "torch_accuracy"),
        ("training", "train_classifier"),
        ("variants", "SELF_TEST_SAMPLES"),
        ("variants", "measure_variant"),
    }
