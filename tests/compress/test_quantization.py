from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from compress_helpers import PROFILES_DIR, make_profile, random_classification
from onnx import numpy_helper
from torch import nn

from edgefleet.compress import (
    ArtifactCache,
    CalibrationMethod,
    DynamicQuantizationConfig,
    Fp16WeightsConfig,
    QuantizedType,
    Recipe,
    Stage,
    StaticQuantizationConfig,
    StructuredPruningConfig,
    VerificationError,
    apply_recipe,
    config_from_dict,
    export_onnx,
    measure_latency,
    registered_configs,
    static_quantization_for,
)
from edgefleet.compress.errors import CompressError
from edgefleet.compress.pruning import prune_channels
from edgefleet.compress.runtime import create_session, run_batched
from edgefleet.compress.training import train_classifier
from edgefleet.profiles import load_profile


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
    assert mac_reduction >= 2.0
    assert fp32.accuracy - pruned.accuracy <= 0.01
    # Channel counts rounded to 16 keep onnxruntime's blocked kernels, so latency falls
    # nearly as fast as MACs. Alternating the two models spreads host load over both.
    fp32_p50, pruned_p50 = [], []
    for _ in range(3):
        fp32_p50.append(measure_latency(fp32.path, threads=1, runs=300, warmup=30).p50_ms)
        pruned_p50.append(measure_latency(pruned.path, threads=1, runs=300, warmup=30).p50_ms)
    speedup = min(fp32_p50) / min(pruned_p50)
    assert speedup >= 0.8 * mac_reduction, f"{speedup:.2f}x faster, {mac_reduction:.2f}x fewer MACs"


# --- quantization techniques on tiny graphs -------------------------------------------


class ResidualConcatNet(nn.Module):
    """Residual add, channel concatenation and a depthwise convolution in 8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.branch = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        residual = torch.relu(stem + self.pointwise(self.depthwise(stem)))
        merged = torch.cat([residual, self.branch(residual)], dim=1)
        return self.head(torch.flatten(nn.functional.max_pool2d(merged, 2), 1))


@pytest.fixture(scope="module")
def tiny_data():
    return random_classification(160, (1, 8, 8), 10, seed=1)


@pytest.fixture(scope="module")
def residual_onnx(tiny_data, tmp_path_factory):
    torch.manual_seed(0)
    model = ResidualConcatNet().eval()
    return export_onnx(model, tiny_data.x_val, tmp_path_factory.mktemp("res") / "res.onnx")


def _onnx_configs():
    # Every ONNX-stage technique that edgefleet ships, with the accuracy gate opened: labels
    # are random here, so only loading and agreement with the float model are meaningful.
    # Techniques that other test modules register for their own cases are left out.
    configs = []
    for cls in registered_configs():
        if cls.STAGE is not Stage.ONNX or not cls.__module__.startswith("edgefleet."):
            continue
        fields = {field.name for field in dataclasses.fields(cls)}
        configs.append(cls(max_accuracy_drop=1.0) if "max_accuracy_drop" in fields else cls())
    return configs


@pytest.mark.parametrize("config", _onnx_configs(), ids=lambda config: config.TYPE)
def test_onnx_technique_on_residual_concat_depthwise(config, residual_onnx, tiny_data, tmp_path):
    artifact = apply_recipe(
        residual_onnx, Recipe([config]), tiny_data, cache=ArtifactCache(tmp_path)
    )

    float_outputs = run_batched(create_session(residual_onnx, threads=1), tiny_data.x_val)
    outputs = run_batched(create_session(artifact.path, threads=1), tiny_data.x_val)
    agreement = (outputs.argmax(axis=1) == float_outputs.argmax(axis=1)).mean()
    assert artifact.path.stat().st_size < residual_onnx.stat().st_size
    assert agreement >= 0.9
    assert artifact.details["top1_agreement"] == pytest.approx(agreement)


@pytest.mark.parametrize("calibration", list(CalibrationMethod))
def test_static_calibration_methods_on_residual_model(
    calibration, residual_onnx, tiny_data, tmp_path
):
    config = StaticQuantizationConfig(calibration=calibration, max_accuracy_drop=1.0)
    artifact = apply_recipe(
        residual_onnx, Recipe([config]), tiny_data, cache=ArtifactCache(tmp_path)
    )

    model = onnx.load(str(artifact.path))
    op_types = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Add", "Concat"} <= op_types
    assert artifact.details["top1_agreement"] >= 0.9


def test_fp16_weights_halve_size_and_keep_float_io(residual_onnx, tiny_data, tmp_path):
    config = Fp16WeightsConfig()
    artifact = apply_recipe(
        residual_onnx, Recipe([config]), tiny_data, cache=ArtifactCache(tmp_path)
    )

    model = onnx.load(str(artifact.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    # The tiny graph's structure outweighs its weights, so compare the bytes saved with
    # the float32 weight bytes: float16 storage saves half of those it converts.
    source = onnx.load(str(residual_onnx))
    weight_bytes = sum(numpy_helper.to_array(t).nbytes for t in source.graph.initializer)
    saved = residual_onnx.stat().st_size - artifact.path.stat().st_size
    assert saved >= 0.4 * weight_bytes
    assert artifact.details["max_abs_logit_diff"] < 1e-2


def test_dynamic_quantizes_only_linear_nodes_by_default(residual_onnx, tiny_data, tmp_path):
    cache = ArtifactCache(tmp_path)
    linear = apply_recipe(
        residual_onnx, Recipe([DynamicQuantizationConfig()]), tiny_data, cache=cache
    )
    with_conv = apply_recipe(
        residual_onnx,
        Recipe([DynamicQuantizationConfig(include_conv=True)]),
        tiny_data,
        cache=cache,
    )

    linear_ops = {node.op_type for node in onnx.load(str(linear.path)).graph.node}
    conv_ops = {node.op_type for node in onnx.load(str(with_conv.path)).graph.node}
    assert "MatMulInteger" in linear_ops
    assert "ConvInteger" not in linear_ops
    assert "ConvInteger" in conv_ops


# --- settings derived from the profile's CPU flags --------------------------------------


@pytest.mark.parametrize(
    ("arch", "flags", "activation", "reduce_range"),
    [
        ("x86_64", ["avx2"], QuantizedType.UINT8, True),
        ("x86_64", ["avx2", "avx512f", "avx512_vnni"], QuantizedType.UINT8, False),
        ("x86_64", ["avx2", "avx_vnni"], QuantizedType.UINT8, False),
        ("aarch64", ["neon", "asimd"], QuantizedType.INT8, False),
        ("aarch64", ["neon", "asimd", "asimddp"], QuantizedType.INT8, False),
    ],
)
def test_static_settings_follow_cpu_flags(arch, flags, activation, reduce_range):
    config = static_quantization_for(make_profile(cpu_arch=arch, cpu_flags=flags))

    assert config.activation_type is activation
    assert config.weight_type is QuantizedType.INT8
    assert config.reduce_range is reduce_range


def test_static_settings_keep_base_fields():
    base = StaticQuantizationConfig(calibration=CalibrationMethod.ENTROPY, max_fp32_nodes=1)
    config = static_quantization_for(make_profile(cpu_flags=["avx2"]), base)
    assert config.calibration is CalibrationMethod.ENTROPY
    assert config.max_fp32_nodes == 1


def test_shipped_profiles_get_reduced_range_only_without_vnni():
    settings = {
        path.stem: static_quantization_for(load_profile(path)).reduce_range
        for path in sorted(PROFILES_DIR.glob("*.toml"))
    }
    # The x86 gateway (Intel N100) has AVX-VNNI; the Raspberry Pis are Arm.
    assert settings == dict.fromkeys(settings, False)


def test_unsigned_weights_are_written_as_uint8(residual_onnx, tiny_data, tmp_path):
    config = StaticQuantizationConfig(
        weight_type=QuantizedType.UINT8,
        activation_type=QuantizedType.UINT8,
        per_channel=False,
        max_accuracy_drop=1.0,
    )
    artifact = apply_recipe(
        residual_onnx, Recipe([config]), tiny_data, cache=ArtifactCache(tmp_path)
    )
    weights = [
        t
        for t in onnx.load(str(artifact.path)).graph.initializer
        if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) == 4
    ]
    assert weights
    assert all(t.data_type == onnx.TensorProto.UINT8 for t in weights)


# --- accuracy-aware fallback ------------------------------------------------------------


@pytest.fixture(scope="module")
def outlier_onnx(small_cnn, small_digits, tmp_path_factory):
    """Return the small CNN with one channel of its second conv scaled up 500x.

    The third conv's matching input channel is scaled down by as much, so the float
    function is unchanged because ReLU is positively homogeneous. Per-tensor int8 of the
    second conv then rounds its other channels' weights away.
    """
    directory = tmp_path_factory.mktemp("outlier")
    source = export_onnx(small_cnn, small_digits.x_val, directory / "source.onnx")
    model = onnx.load(str(source))
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    tensors = {tensor.name: tensor for tensor in model.graph.initializer}

    def scale(name, index, factor, axis):
        array = numpy_helper.to_array(tensors[name]).copy()
        np.moveaxis(array, axis, 0)[index] *= factor
        tensors[name].CopyFrom(numpy_helper.from_array(array, name))

    scale(convs[1].input[1], 0, 500.0, axis=0)
    scale(convs[1].input[2], 0, 500.0, axis=0)
    scale(convs[2].input[1], 0, 1 / 500.0, axis=1)
    path = directory / "outlier.onnx"
    onnx.save(model, str(path))
    return path


def test_fallback_keeps_sensitive_nodes_in_fp32(outlier_onnx, small_digits, tmp_path):
    lines: list[str] = []
    plain = StaticQuantizationConfig(per_channel=False, max_accuracy_drop=0.02, max_fp32_nodes=0)
    fallback = dataclasses.replace(plain, max_fp32_nodes=3)
    cache = ArtifactCache(tmp_path)
    fp32 = apply_recipe(outlier_onnx, Recipe(), small_digits, cache=cache)

    with pytest.raises(VerificationError, match="tried all nodes int8"):
        apply_recipe(outlier_onnx, Recipe([plain]), small_digits, cache=cache)
    artifact = apply_recipe(
        outlier_onnx, Recipe([fallback]), small_digits, cache=cache, progress=lines.append
    )

    assert fp32.accuracy - artifact.accuracy <= 0.02
    assert 1 <= artifact.details["fp32_nodes"] <= 3
    kept = [line for line in lines if line.startswith("kept ")]
    assert len(kept) == artifact.details["fp32_nodes"]
    assert "Conv" in kept[0]


def test_fallback_names_nodes_tried_when_it_cannot_fit(outlier_onnx, small_digits, tmp_path):
    config = StaticQuantizationConfig(
        per_channel=False, calibration_samples=1, max_accuracy_drop=0.0, max_fp32_nodes=1
    )
    cache = ArtifactCache(tmp_path)
    try:
        apply_recipe(outlier_onnx, Recipe([config]), small_digits, cache=cache)
    except VerificationError as exc:
        message = str(exc)
        assert "tried all nodes int8" in message
        assert "in float32" in message
        assert "max_fp32_nodes" in message
    else:
        pytest.skip("one excluded node already matched the float model exactly")


@pytest.fixture(scope="module")
def outlier_mlp_onnx(small_digits, tmp_path_factory):
    """Return a trained 64-32-32-10 MLP whose two last Gemm weights each have an outlier.

    The second and third Linear layers get one input column scaled up 500x, and the
    layer before each gets the matching output row and bias scaled down by as much. ReLU
    is positively homogeneous, so the float function is unchanged. Per-tensor int8 of
    either scaled layer rounds its other columns away, while the first layer stays
    harmless to quantize. Returns the file with only the second layer scaled under
    ``one_outlier`` and the file with both scaled under ``two_outliers``.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    train_classifier(model, small_digits, epochs=20, seed=0, learning_rate=3e-3)
    linears = [layer for layer in model if isinstance(layer, nn.Linear)]

    def move_outlier(before: nn.Linear, after: nn.Linear, unit: int) -> None:
        with torch.no_grad():
            before.weight[unit] /= 500.0
            before.bias[unit] /= 500.0
            after.weight[:, unit] *= 500.0

    directory = tmp_path_factory.mktemp("outlier-mlp")
    move_outlier(linears[0], linears[1], unit=0)
    one_outlier = export_onnx(model, small_digits.x_val, directory / "one.onnx")
    move_outlier(linears[1], linears[2], unit=1)
    two_outliers = export_onnx(model, small_digits.x_val, directory / "two.onnx")
    return {"one_outlier": one_outlier, "two_outliers": two_outliers}


def test_dynamic_fallback_keeps_sensitive_gemm_in_fp32(outlier_mlp_onnx, small_digits, tmp_path):
    lines: list[str] = []
    plain = DynamicQuantizationConfig(per_channel=False, max_accuracy_drop=0.02, max_fp32_nodes=0)
    fallback = dataclasses.replace(plain, max_fp32_nodes=3)
    cache = ArtifactCache(tmp_path)
    source = outlier_mlp_onnx["one_outlier"]
    fp32 = apply_recipe(source, Recipe(), small_digits, cache=cache)

    with pytest.raises(VerificationError, match="tried all nodes int8"):
        apply_recipe(source, Recipe([plain]), small_digits, cache=cache)
    artifact = apply_recipe(
        source, Recipe([fallback]), small_digits, cache=cache, progress=lines.append
    )

    assert fp32.accuracy - artifact.accuracy <= 0.02
    assert artifact.details["fp32_nodes"] == 1
    fp32_lines = [line for line in lines if line.startswith("kept ")]
    assert len(fp32_lines) == 1
    # quantize_dynamic rewrites each Gemm as MatMul and Add before quantizing it.
    assert "MatMul" in fp32_lines[0]
    ops = [node.op_type for node in onnx.load(str(artifact.path)).graph.node]
    assert ops.count("MatMulInteger") == 2
    assert ops.count("MatMul") == 1


def test_dynamic_fallback_reports_nodes_when_it_cannot_fit(
    outlier_mlp_onnx, small_digits, tmp_path
):
    cache = ArtifactCache(tmp_path)
    source = outlier_mlp_onnx["two_outliers"]
    one_node = DynamicQuantizationConfig(
        per_channel=False, max_accuracy_drop=0.02, max_fp32_nodes=1
    )

    with pytest.raises(VerificationError) as raised:
        apply_recipe(source, Recipe([one_node]), small_digits, cache=cache)
    message = str(raised.value)
    assert "tried all nodes int8" in message
    assert message.count("in float32:") == 1
    assert "max_fp32_nodes" in message

    two_nodes = dataclasses.replace(one_node, max_fp32_nodes=2)
    artifact = apply_recipe(source, Recipe([two_nodes]), small_digits, cache=cache)
    assert artifact.details["fp32_nodes"] == 2


def test_static_fallback_reports_nodes_when_it_cannot_fit(outlier_mlp_onnx, small_digits, tmp_path):
    cache = ArtifactCache(tmp_path)
    source = outlier_mlp_onnx["two_outliers"]
    one_node = StaticQuantizationConfig(per_channel=False, max_accuracy_drop=0.02, max_fp32_nodes=1)

    with pytest.raises(VerificationError) as raised:
        apply_recipe(source, Recipe([one_node]), small_digits, cache=cache)
    message = str(raised.value)
    assert "tried all nodes int8" in message
    assert message.count("in float32:") == 1
    assert "max_fp32_nodes" in message

    two_nodes = dataclasses.replace(one_node, max_fp32_nodes=2)
    artifact = apply_recipe(source, Recipe([two_nodes]), small_digits, cache=cache)
    assert artifact.details["fp32_nodes"] == 2


def test_dynamic_config_version_1_loads_without_fallback():
    loaded = config_from_dict(
        {"type": "dynamic_quantization", "version": 1, "fields": {"per_channel": False}}
    )

    assert loaded == DynamicQuantizationConfig(per_channel=False, max_fp32_nodes=0)
    assert loaded.to_dict()["version"] == 2


# --- torch-stage techniques on the same tiny network -----------------------------------


def _torch_recipes() -> dict[str, Recipe]:
    from edgefleet.compress import (
        ChannelPruningConfig,
        DistillationConfig,
        MagnitudeSparsityConfig,
        SearchedArchitectureConfig,
    )

    prune = ChannelPruningConfig(ratio=0.5, finetune_epochs=1)
    return {
        "channel_pruning": Recipe([prune]),
        "structured_pruning": Recipe([StructuredPruningConfig(ratio=0.5, finetune_epochs=1)]),
        "distillation": Recipe([prune, DistillationConfig(epochs=1)]),
        "magnitude_sparsity": Recipe([MagnitudeSparsityConfig(sparsity=0.5, finetune_epochs=1)]),
        "searched_architecture": Recipe(
            [SearchedArchitectureConfig(widths=(8, 8, 16), depths=(1, 1, 1), epochs=1)]
        ),
    }


def test_every_torch_technique_has_a_tiny_model_case():
    torch_types = {cls.TYPE for cls in registered_configs() if cls.STAGE is Stage.TORCH}
    # test_transformer.py applies transformer pruning to a tiny BERT classifier.
    assert torch_types == set(_torch_recipes()) | {"transformer_pruning"}


class ResidualConcatPooledNet(ResidualConcatNet):
    """``ResidualConcatNet`` with global average pooling before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        residual = torch.relu(stem + self.pointwise(self.depthwise(stem)))
        merged = torch.cat([residual, self.branch(residual)], dim=1)
        return self.head(merged.mean(dim=(2, 3)))


def test_pruning_flattened_concat_raises_clear_error():
    torch.manual_seed(0)
    with pytest.raises(CompressError, match="ignored_layers"):
        prune_channels(ResidualConcatNet().eval(), torch.randn(2, 1, 8, 8), ratio=0.5)


@pytest.mark.parametrize("name", sorted(_torch_recipes()))
def test_torch_technique_on_residual_concat_depthwise(name, tiny_data, tmp_path):
    torch.manual_seed(0)
    model = ResidualConcatPooledNet().eval()
    cache = ArtifactCache(tmp_path)

    fp32 = apply_recipe(model, Recipe(), tiny_data, cache=cache)
    artifact = apply_recipe(model, _torch_recipes()[name], tiny_data, cache=cache)

    outputs = run_batched(create_session(artifact.path, threads=1), tiny_data.x_val)
    assert outputs.shape == (len(tiny_data.x_val), 10)
    assert np.isfinite(outputs).all()
    assert artifact.sha256 != fp32.sha256
    if name in ("channel_pruning", "structured_pruning", "distillation"):
        assert artifact.details["macs_after"] < artifact.details["macs_before"]
        assert artifact.path.stat().st_size < fp32.path.stat().st_size
    if name == "magnitude_sparsity":
        assert artifact.details["weight_sparsity"] >= 0.45
