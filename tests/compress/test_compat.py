from __future__ import annotations

import numpy as np
import onnx
import pytest
from compress_helpers import make_profile
from onnx import TensorProto, helper

from edgefleet.compress import (
    ArtifactCache,
    ConfigError,
    ExportError,
    Recipe,
    StaticQuantizationConfig,
    apply_recipe,
    export_onnx,
    make_compatible,
    onnx_support,
)
from edgefleet.compress.export import ONNX_OPSET, onnx_opset
from edgefleet.compress.runtime import create_session, run_batched
from edgefleet.compress.variants import measure_variant


@pytest.mark.parametrize(
    ("version", "opset", "ir_version"),
    [
        ("1.13.1", 17, 8),
        ("1.14.0", 18, 8),
        ("1.16.3", 19, 9),
        ("1.17.0", 20, 9),
        ("1.18.0", 21, 10),
        ("1.20.1", 21, 10),
        ("1.22.0", 22, 10),
        ("1.99.0", 23, 11),
    ],
)
def test_onnx_support_table(version, opset, ir_version):
    support = onnx_support(version)
    assert support.max_opset == opset
    assert support.max_ir_version == ir_version


@pytest.mark.parametrize("version", ["0.5.0", "one.two", "1"])
def test_onnx_support_rejects_invalid_versions(version):
    with pytest.raises(ConfigError):
        onnx_support(version)


@pytest.fixture(scope="module")
def small_onnx(small_cnn, small_digits, tmp_path_factory):
    return export_onnx(small_cnn, small_digits.x_val, tmp_path_factory.mktemp("c") / "m.onnx")


def test_compatible_model_is_left_alone(small_onnx, tmp_path):
    result = make_compatible(small_onnx, tmp_path / "out.onnx", "1.20.0")
    assert not result.converted
    assert result.max_opset == 21
    assert not (tmp_path / "out.onnx").exists()


def test_no_runtime_version_checks_nothing(small_onnx, tmp_path):
    result = make_compatible(small_onnx, tmp_path / "out.onnx", None)
    assert result.max_opset is None
    assert not result.converted


def test_old_runtime_gets_down_converted_model(small_onnx, small_digits, tmp_path):
    destination = tmp_path / "old.onnx"
    result = make_compatible(small_onnx, destination, "1.13.0")

    assert result.converted
    assert (result.source_opset, result.opset) == (ONNX_OPSET, 17)
    assert result.ir_version <= 8
    assert onnx_opset(destination) == 17
    expected = run_batched(create_session(small_onnx, threads=1), small_digits.x_val)
    actual = run_batched(create_session(destination, threads=1), small_digits.x_val)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_unconvertible_operator_is_rejected(tmp_path):
    # Gelu exists from opset 20 on; opset 17 has no such operator to convert it to.
    node = helper.make_node("Gelu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    source = tmp_path / "gelu.onnx"
    onnx.save(model, str(source))

    with pytest.raises(ExportError, match="update onnxruntime on the device"):
        make_compatible(source, tmp_path / "out.onnx", "1.13.0")


def test_variant_records_conversion_for_old_runtime(small_cnn, small_digits, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    artifact = apply_recipe(
        small_cnn, Recipe([StaticQuantizationConfig()]), small_digits, cache=cache
    )
    report = measure_variant(
        artifact,
        dataset=small_digits,
        profile=make_profile(onnxruntime_version="1.13.0"),
        out_dir=tmp_path / "out",
        latency_scale=1.0,
        latency_runs=10,
    )

    assert report.opset == 17
    assert report.compatibility is not None
    assert report.compatibility.converted
    assert report.sha256 != artifact.sha256
    assert report.to_dict()["compatibility"]["source_opset"] == ONNX_OPSET
