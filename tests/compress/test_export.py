from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgefleet.compress import ModelLoadError, VerificationError, export_onnx, verify_against_torch
from edgefleet.compress.export import ONNX_OPSET, check_onnx_file, onnx_opset
from edgefleet.compress.runtime import create_session, tensor_specs


def test_export_writes_checked_model_with_dynamic_batch(small_cnn, small_digits, tmp_path):
    path = export_onnx(small_cnn, small_digits.x_val, tmp_path / "model.onnx")

    assert onnx_opset(path) == ONNX_OPSET
    inputs, outputs = tensor_specs(create_session(path, threads=1))
    assert inputs[0].shape == (-1, 1, 8, 8)
    assert outputs[0].shape == (-1, 10)
    result = verify_against_torch(path, small_cnn, small_digits.x_val[:50])
    assert result.max_abs_diff <= result.atol


def test_export_gate_rejects_tampered_model(small_cnn, small_digits, tmp_path):
    path = export_onnx(small_cnn, small_digits.x_val, tmp_path / "model.onnx")
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda tensor: np.prod(tensor.dims))
    array = numpy_helper.to_array(weight).copy()
    array.flat[: array.size // 10] += 0.05
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    check_onnx_file(tampered)  # still a well-formed graph: only the numbers changed

    with pytest.raises(VerificationError, match="differs from the torch model"):
        verify_against_torch(tampered, small_cnn, small_digits.x_val[:50])


def test_check_rejects_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        check_onnx_file(path)


def test_check_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"empty\.onnx is empty"):
        check_onnx_file(path)


def test_check_rejects_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        check_onnx_file(tmp_path / "absent.onnx")
