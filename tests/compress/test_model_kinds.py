"""Models and datasets outside what edgefleet supports get an error naming what it supports."""

from __future__ import annotations

import numpy as np
import pytest
from compress_helpers import make_profile, random_classification
from onnx import TensorProto, helper, numpy_helper, save

from edgefleet.compress import Dataset, Recipe, StaticQuantizationConfig, plan
from edgefleet.compress.dataset import SUPPORTED_MODELS
from edgefleet.compress.errors import DatasetError
from edgefleet.compress.planner import check_dataset_fits

FEATURES = 64
CLASSES = 10


def _save_model(path, inputs, nodes, weights, output_shape, extra_initializers=None):
    initializers = {"w": weights, **(extra_initializers or {})}
    graph = helper.make_graph(
        nodes,
        "classifier",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        initializer=[numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    save(model, str(path))
    return path


def _float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weights(seed=0):
    return np.random.default_rng(seed).standard_normal((FEATURES, CLASSES)).astype(np.float32)


@pytest.fixture(scope="module")
def flat_data():
    return random_classification(64, (FEATURES,), CLASSES)


def test_two_inputs_named_unsupported(flat_data, tmp_path):
    nodes = [
        helper.make_node("MatMul", ["x1", "w"], ["a"]),
        helper.make_node("MatMul", ["x2", "w"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    inputs = [_float_input("x1", ["N", FEATURES]), _float_input("x2", ["N", FEATURES])]
    path = _save_model(tmp_path / "two.onnx", inputs, nodes, _weights(), ["N", CLASSES])

    with pytest.raises(DatasetError) as caught:
        check_dataset_fits(path, flat_data)

    message = str(caught.value)
    assert "the model has 2 inputs (x1, x2)" in message
    assert SUPPORTED_MODELS in message


def test_int64_input_named_unsupported(flat_data, tmp_path):
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["xf", "w"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", FEATURES])]
    path = _save_model(tmp_path / "int64.onnx", inputs, nodes, _weights(), ["N", CLASSES])

    with pytest.raises(DatasetError) as caught:
        check_dataset_fits(path, flat_data)

    message = str(caught.value)
    assert "input 'x' has element type int64" in message
    assert SUPPORTED_MODELS in message


def test_missing_batch_dimension_named(flat_data, tmp_path):
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["row"]),
        helper.make_node("MatMul", ["row", "w"], ["y"]),
    ]
    inputs = [_float_input("x", [FEATURES])]
    # Unsqueeze takes its axes as an input tensor from opset 13 on.
    axes = {"axes": np.array([0], np.int64)}
    path = _save_model(tmp_path / "nobatch.onnx", inputs, nodes, _weights(), [1, CLASSES], axes)

    with pytest.raises(DatasetError) as caught:
        check_dataset_fits(path, flat_data)

    message = str(caught.value)
    assert "input 'x' has shape [64], without a batch dimension" in message
    assert "batches of shape (N, 64)" in message
    assert SUPPORTED_MODELS in message


@pytest.mark.parametrize(
    ("split", "array", "expected"),
    [
        ("x", np.zeros((4, FEATURES), np.int64), "x_train has dtype int64"),
        ("y", np.zeros(4, np.float32), "y_train has dtype float32"),
    ],
)
def test_dataset_dtypes_named_unsupported(split, array, expected):
    arrays = {
        "x_train": np.zeros((4, FEATURES), np.float32),
        "y_train": np.zeros(4, np.int64),
        "x_val": np.zeros((2, FEATURES), np.float32),
        "y_val": np.zeros(2, np.int64),
    }
    arrays[f"{split}_train"] = array

    with pytest.raises(DatasetError) as caught:
        Dataset(**arrays)

    message = str(caught.value)
    assert expected in message
    assert SUPPORTED_MODELS in message


def test_static_int8_calibrates_fixed_batch(small_digits, tmp_path):
    flat = Dataset(
        x_train=small_digits.x_train.reshape(len(small_digits.x_train), -1),
        y_train=small_digits.y_train,
        x_val=small_digits.x_val.reshape(len(small_digits.x_val), -1),
        y_val=small_digits.y_val,
    )
    # A least-squares linear classifier is accurate enough for int8 to keep its accuracy.
    targets = np.eye(CLASSES, dtype=np.float32)[flat.y_train]
    weights, *_ = np.linalg.lstsq(flat.x_train, targets, rcond=None)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    inputs = [_float_input("x", [1, FEATURES])]
    path = _save_model(
        tmp_path / "batch1.onnx", inputs, nodes, weights.astype(np.float32), [1, CLASSES]
    )
    int8 = Recipe([StaticQuantizationConfig()])

    report = plan(
        path, flat, make_profile(), out_dir=tmp_path / "out", recipes=[int8], latency_runs=20
    )

    assert [variant.recipe for variant in report.variants] == [int8]
    assert not any(note.startswith("rejected") for note in report.notes)
    assert report.variants[0].inputs[0].shape == (1, FEATURES)


def test_wrong_sample_shape_not_called_unbatched(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    inputs = [_float_input("x", ["N", FEATURES])]
    path = _save_model(tmp_path / "mlp.onnx", inputs, nodes, _weights(), ["N", CLASSES])
    images = random_classification(16, (4, 16), CLASSES)

    with pytest.raises(DatasetError) as caught:
        check_dataset_fits(path, images)

    message = str(caught.value)
    assert "rejects dataset samples of shape (4, 16)" in message
    assert "without a batch dimension" not in message
