from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefleet.compress import (
    DigitsCNN,
    GraphFeatures,
    LatencyModel,
    MemoryModel,
    ServedLatencyTracker,
    StaticQuantizationConfig,
    correct,
    export_onnx,
    graph_features,
    leave_one_out,
    measure_p50_interleaved,
    measure_peak_memory,
)
from edgefleet.compress.quantization import quantize_onnx_static


def _features(conv=0.0, linear=0.0, nodes=5, weights=1.0, activations=0.1) -> GraphFeatures:
    return GraphFeatures(
        conv_fp32_mmacs=conv,
        conv_int8_mmacs=0.0,
        linear_fp32_mmacs=linear,
        linear_int8_mmacs=0.0,
        dynamic_int8_mmacs=0.0,
        nodes=nodes,
        weight_mib=weights,
        activation_mib=activations,
    )


def test_features_count_digits_cnn_macs(small_digits, tmp_path):
    path = export_onnx(DigitsCNN((8, 16, 16)), small_digits.x_val, tmp_path / "m.onnx")
    features = graph_features(path)

    # 3x3 convs at 8x8: 1->8, 8->16, 16->16 channels, then a 256->10 linear head.
    expected_conv = 64 * 9 * (1 * 8 + 8 * 16 + 16 * 16)
    assert features.conv_fp32_mmacs * 1e6 == pytest.approx(expected_conv)
    assert features.linear_fp32_mmacs * 1e6 == pytest.approx(256 * 10)
    assert features.conv_fraction > 0.95


def test_features_count_int8_after_static_quantization(small_digits, tmp_path):
    source = export_onnx(DigitsCNN((8, 16, 16)), small_digits.x_val, tmp_path / "m.onnx")
    quantized = quantize_onnx_static(
        source,
        tmp_path / "q.onnx",
        StaticQuantizationConfig(),
        input_name="input",
        calibration_inputs=small_digits.x_train,
    )
    before, after = graph_features(source), graph_features(quantized)

    assert after.conv_fp32_mmacs == 0
    assert after.conv_int8_mmacs == pytest.approx(before.conv_fp32_mmacs)
    assert after.weight_mib < before.weight_mib / 3


def test_latency_model_recovers_linear_costs():
    features = [
        _features(conv=c, linear=lin) for c, lin in [(1, 0), (2, 1), (4, 0), (3, 3), (5, 2)]
    ]
    measured = [0.05 + 0.1 * f.conv_fp32_mmacs + 0.02 * f.linear_fp32_mmacs for f in features]
    model = LatencyModel.fit(features, measured, threads=1)

    assert model.predict(_features(conv=6, linear=1)) == pytest.approx(0.05 + 0.6 + 0.02, rel=1e-3)
    assert np.max(np.abs(leave_one_out(features, measured))) < 1e-3


def test_latency_model_needs_two_variants():
    with pytest.raises(ValueError, match="two or more"):
        LatencyModel.fit([_features(conv=1)], [1.0], threads=1)


def test_memory_model_fits_weights_and_activations():
    features = [
        _features(weights=w, activations=a) for w, a in [(1, 0.1), (2, 0.5), (4, 0.2), (8, 1)]
    ]
    measured = [10 + 1.2 * f.weight_mib + 2 * f.activation_mib for f in features]
    model = MemoryModel.fit(features, measured)
    assert model.predict(_features(weights=3, activations=0.3)) == pytest.approx(14.2, rel=1e-3)


def test_correct_applies_calibration_then_served_ratio():
    assert correct(2.0, calibration_scale=3.0) == pytest.approx(6.0)
    assert correct(2.0, calibration_scale=3.0, served_ratio=1.5) == pytest.approx(9.0)


@pytest.mark.parametrize(
    ("scale", "ratio"), [(0.0, None), (float("nan"), None), (1.0, 0.01), (1.0, 50.0)]
)
def test_correct_rejects_implausible_factors(scale, ratio):
    with pytest.raises(ValueError):
        correct(1.0, calibration_scale=scale, served_ratio=ratio)


def test_served_tracker_smooths_ratio():
    tracker = ServedLatencyTracker(smoothing=0.5)
    assert tracker.update(12.0, 10.0) == pytest.approx(1.2)
    assert tracker.update(8.0, 10.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        tracker.update(0.0, 10.0)


# Widths of the digits CNN family the predictor is scored on; each width is measured as
# float32 and as static int8.
FAMILY_WIDTHS = [
    (8, 16, 16),
    (16, 32, 32),
    (24, 48, 48),
    (32, 32, 64),
    (32, 64, 64),
    (48, 96, 96),
    (64, 96, 128),
    (64, 128, 128),
    (96, 160, 192),
]


@pytest.mark.slow
def test_predictor_error_on_digits_family(digits, tmp_path):
    paths = []
    for widths in FAMILY_WIDTHS:
        torch.manual_seed(0)
        source = export_onnx(DigitsCNN(widths).eval(), digits.x_val, tmp_path / f"{widths}.onnx")
        quantized = quantize_onnx_static(
            source,
            tmp_path / f"{widths}-int8.onnx",
            StaticQuantizationConfig(),
            input_name="input",
            calibration_inputs=digits.x_train,
        )
        paths += [source, quantized]
    features = [graph_features(path) for path in paths]
    p50 = measure_p50_interleaved(paths, threads=1, rounds=5, runs=100)
    memory = [measure_peak_memory(path, threads=1) for path in paths]

    p50_errors = np.abs(leave_one_out(features, p50))
    memory_within = np.mean(np.abs(leave_one_out(features, memory, memory=True)) <= 0.10)
    # A predictor that ignores the graph and always predicts the mean latency.
    mean_errors = np.abs(np.mean(p50) / np.asarray(p50) - 1.0)

    assert memory_within >= 0.9
    assert np.median(p50_errors) < np.median(mean_errors)
    # The criterion: leave-one-out p50 predictions within +-10% for 90% of the variants.
    p50_within = np.mean(p50_errors <= 0.10)
    assert p50_within >= 0.9, f"{p50_within:.0%} within 10%; errors {np.round(p50_errors, 3)}"
