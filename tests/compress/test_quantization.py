from __future__ import annotations

import pytest

from edgefleet.compress import (
    ArtifactCache,
    Recipe,
    StaticQuantizationConfig,
    StructuredPruningConfig,
    VerificationError,
    apply_recipe,
    measure_latency,
)


def test_int8_shrinks_and_verifies_on_small_model(small_cnn, small_digits, tmp_path):
    cache = ArtifactCache(tmp_path)
    fp32 = apply_recipe(small_cnn, Recipe(), small_digits, cache=cache)
    int8 = apply_recipe(small_cnn, Recipe([StaticQuantizationConfig()]), small_digits, cache=cache)

    assert int8.quantized
    assert int8.path.stat().st_size < fp32.path.stat().st_size
    assert fp32.accuracy - int8.accuracy <= 0.02
    assert int8.details["top1_agreement"] >= 0.95


def test_int8_rejected_when_accuracy_drops_too_far(small_cnn, small_digits, tmp_path):
    # One calibration sample and per-tensor scales give clipped activation ranges; a zero
    # tolerance makes any resulting loss a rejection. The exact-tie case is allowed.
    config = StaticQuantizationConfig(
        calibration_samples=1, per_channel=False, max_accuracy_drop=0.0
    )
    cache = ArtifactCache(tmp_path)
    fp32 = apply_recipe(small_cnn, Recipe(), small_digits, cache=cache)
    try:
        int8 = apply_recipe(small_cnn, Recipe([config]), small_digits, cache=cache)
    except VerificationError as exc:
        assert "max_accuracy_drop=0.0" in str(exc)
    else:
        assert int8.accuracy >= fp32.accuracy


@pytest.mark.slow
def test_digits_int8_smaller_faster_and_accurate(digits_cnn, digits, tmp_path):
    cache = ArtifactCache(tmp_path)
    fp32 = apply_recipe(digits_cnn, Recipe(), digits, cache=cache)
    int8 = apply_recipe(digits_cnn, Recipe([StaticQuantizationConfig()]), digits, cache=cache)

    ratio = fp32.path.stat().st_size / int8.path.stat().st_size
    assert ratio >= 3.5, f"int8 is only {ratio:.2f}x smaller"
    assert fp32.accuracy - int8.accuracy <= 0.005
    fp32_latency = measure_latency(fp32.path, threads=1, runs=400, warmup=50)
    int8_latency = measure_latency(int8.path, threads=1, runs=400, warmup=50)
    assert int8_latency.p50_ms <= fp32_latency.p50_ms


@pytest.mark.slow
def test_digits_pruned_with_distillation_within_one_point(digits_cnn, digits, tmp_path):
    recipe = Recipe([StructuredPruningConfig(ratio=0.3, finetune_epochs=4, distill=True)])
    cache = ArtifactCache(tmp_path)
    fp32 = apply_recipe(digits_cnn, Recipe(), digits, cache=cache)
    pruned = apply_recipe(digits_cnn, recipe, digits, cache=cache)

    mac_reduction = pruned.details["macs_before"] / pruned.details["macs_after"]
    assert 1.8 <= mac_reduction <= 2.5
    assert fp32.accuracy - pruned.accuracy <= 0.01
