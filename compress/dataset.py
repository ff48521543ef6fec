"""Evaluation datasets: the training split used for fine-tuning and calibration, and the
held-out validation split that every variant's accuracy is measured on.

On disk a dataset is a ``.npz`` file with four arrays::

    x_train  float32, shape (N, ...)     model inputs, one sample per row
    y_train  integer, shape (N,)         class labels 0..C-1
    x_val    float32, shape (M, ...)     same per-sample shape as x_train
    y_val    integer, shape (M,)
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np

from edgefleet.compress.errors import DatasetError

__all__ = ["DATASET_KEYS", "SUPPORTED_MODELS", "Dataset", "load_dataset", "save_dataset_npz"]

DATASET_KEYS = ("x_train", "y_train", "x_val", "y_val")
# The one kind of model that planning, the agent's self-test and inference handle.
SUPPORTED_MODELS = (
    "edgefleet supports classifiers with one float32 input whose first dimension is the "
    "batch, trained on integer class labels"
)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Training and validation arrays of a classification task, validated on creation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            x = _check_inputs(getattr(self, f"x_{split}"), f"x_{split}")
            y = _check_labels(getattr(self, f"y_{split}"), f"y_{split}")
            if len(x) != len(y):
                raise DatasetError(
                    f"x_{split} has {len(x)} samples but y_{split} has {len(y)} labels; "
                    "each sample needs exactly one label"
                )
            object.__setattr__(self, f"x_{split}", x)
            object.__setattr__(self, f"y_{split}", y)
        if self.x_train.shape[1:] != self.x_val.shape[1:]:
            raise DatasetError(
                f"x_train samples have shape {self.x_train.shape[1:]} but x_val samples have "
                f"shape {self.x_val.shape[1:]}; both splits must share one sample shape"
            )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes, taken as the largest label plus one."""
        return int(max(self.y_train.max(), self.y_val.max())) + 1

    @property
    def digest(self) -> str:
        """SHA-256 over the four arrays' dtypes, shapes and bytes."""
        digest = hashlib.sha256()
        for key in DATASET_KEYS:
            array = np.ascontiguousarray(getattr(self, key))
            digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()


def load_dataset(path: str | Path) -> Dataset:
    """Read and validate a dataset ``.npz`` file; raises ``DatasetError`` naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}; pass an .npz file with {_KEYS_TEXT}")
    if not zipfile.is_zipfile(path):
        # np.load would try a pickle next and report that it refuses one.
        raise DatasetError(
            f"dataset {path} is not an .npz archive; pass an .npz file with {_KEYS_TEXT}, "
            "written with numpy.savez or edgefleet.compress.save_dataset_npz"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in DATASET_KEYS if key not in archive.files]
            if missing:
                raise DatasetError(
                    f"dataset {path} is missing array(s) {', '.join(missing)}; "
                    f"it must contain {_KEYS_TEXT}"
                )
            arrays = {key: archive[key] for key in DATASET_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DatasetError):
            raise
        if "Object arrays cannot be loaded" in str(exc):
            # numpy refuses object arrays without allow_pickle, which is never set: an
            # object array is a pickle, and unpickling a file can run arbitrary code.
            raise DatasetError(
                f"dataset {path} contains pickled object arrays, and edgefleet never unpickles "
                "data; store numeric arrays only (numpy.savez with numeric dtypes)"
            ) from None
        raise DatasetError(
            f"cannot read dataset {path} as an .npz archive: {exc}; "
            "write it with numpy.savez or edgefleet.compress.save_dataset_npz"
        ) from exc
    return Dataset(**arrays)


def save_dataset_npz(dataset: Dataset, path: str | Path) -> Path:
    """Write ``dataset`` as an ``.npz`` file that ``load_dataset`` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez(handle, **{key: getattr(dataset, key) for key in DATASET_KEYS})
    return path


_KEYS_TEXT = "arrays " + ", ".join(DATASET_KEYS)


def _check_inputs(array: object, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.ndim < 2 or array.shape[0] == 0:
        raise DatasetError(
            f"{name} has shape {array.shape}; expected (samples, ...) with at least one sample"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise DatasetError(
            f"{name} has dtype {array.dtype}, but {SUPPORTED_MODELS}; store {name} as float32 "
            "(models that take integer inputs such as token ids are not supported)"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise DatasetError(f"{name} contains NaN or infinite values; clean the inputs first")
    return array


def _check_labels(array: object, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.ndim != 1:
        raise DatasetError(f"{name} has shape {array.shape}; expected one label per sample (N,)")
    if not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(
            f"{name} has dtype {array.dtype}, but {SUPPORTED_MODELS}; store {name} as integer "
            "class indices 0..C-1 (regression targets are not supported)"
        )
    if array.size and array.min() < 0:
        raise DatasetError(f"{name} contains negative labels; expected class indices 0..C-1")
    return np.ascontiguousarray(array, dtype=np.int64)
