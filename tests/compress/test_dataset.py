from __future__ import annotations

import numpy as np
import pytest

from edgefleet.compress import Dataset, DatasetError, load_dataset, save_dataset_npz


def test_dataset_npz_round_trip(small_digits, tmp_path):
    loaded = load_dataset(save_dataset_npz(small_digits, tmp_path / "d.npz"))
    for key in ("x_train", "y_train", "x_val", "y_val"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(small_digits, key))
    assert loaded.digest == small_digits.digest
    assert loaded.sample_shape == (1, 8, 8)
    assert loaded.num_classes == 10


def test_digits_split_is_stratified_and_scaled(digits):
    assert digits.x_train.dtype == np.float32
    assert digits.x_train.shape[1:] == (1, 8, 8)
    assert digits.x_train.min() >= 0.0
    assert digits.x_train.max() <= 1.0
    counts = np.bincount(digits.y_val, minlength=10)
    assert counts.min() >= 35


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y_train": np.zeros(3, np.int64)}, "x_train has 4 samples but y_train has 3"),
        ({"x_val": np.zeros((4, 1, 8, 9), np.float32)}, "share one sample shape"),
        ({"x_train": np.zeros((4, 1, 8, 8), np.int64)}, "store x_train as float32"),
        ({"y_val": np.zeros(4, np.float32)}, "store y_val as integer class indices"),
        ({"y_val": -np.ones(4, np.int64)}, "negative labels"),
        ({"x_val": np.full((4, 1, 8, 8), np.nan, np.float32)}, "NaN or infinite"),
        ({"x_train": np.zeros((0, 1, 8, 8), np.float32)}, "at least one sample"),
    ],
)
def test_dataset_rejects_bad_arrays(arrays, message):
    fields = {
        "x_train": np.zeros((4, 1, 8, 8), np.float32),
        "y_train": np.zeros(4, np.int64),
        "x_val": np.zeros((4, 1, 8, 8), np.float32),
        "y_val": np.zeros(4, np.int64),
    }
    fields.update(arrays)
    with pytest.raises(DatasetError, match=message):
        Dataset(**fields)


def test_load_dataset_rejects_non_npz(tmp_path):
    path = tmp_path / "d.npz"
    path.write_text("not an archive")
    with pytest.raises(DatasetError, match=r"is not an \.npz archive") as raised:
        load_dataset(path)
    assert "pickle" not in str(raised.value)
