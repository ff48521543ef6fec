"""Conversion between ``edgefleet.v1.Tensor`` messages and numpy arrays.

A ``Tensor`` carries row-major little-endian bytes, a shape and a ``TensorType``. The same
mapping also relates onnxruntime's type strings (``"tensor(float)"``) to numpy dtypes, so
inference inputs can be checked against the model before they reach onnxruntime.
"""

from __future__ import annotations

import math

import numpy as np

from edgefleet.errors import InvalidInputError
from edgefleet.protos.v1 import fleet_pb2

# Explicit little-endian dtypes, because the wire format is little-endian on every host.
_PROTO_TO_DTYPE: dict[int, np.dtype] = {
    fleet_pb2.TENSOR_TYPE_FLOAT32: np.dtype("<f4"),
    fleet_pb2.TENSOR_TYPE_FLOAT16: np.dtype("<f2"),
    fleet_pb2.TENSOR_TYPE_INT64: np.dtype("<i8"),
    fleet_pb2.TENSOR_TYPE_INT32: np.dtype("<i4"),
    fleet_pb2.TENSOR_TYPE_UINT8: np.dtype("u1"),
    fleet_pb2.TENSOR_TYPE_INT8: np.dtype("i1"),
}
_DTYPE_TO_PROTO = {dtype.newbyteorder("="): proto for proto, dtype in _PROTO_TO_DTYPE.items()}

# onnxruntime's NodeArg.type strings for the same element types.
_ORT_TYPE_TO_DTYPE: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
}


def dtype_for_tensor_type(tensor_type: int) -> np.dtype:
    """Return the numpy dtype of a ``TensorType`` value; raises ``InvalidInputError``."""
    try:
        return _PROTO_TO_DTYPE[tensor_type]
    except KeyError:
        raise InvalidInputError(
            f"unsupported tensor type {tensor_type}; expected one of "
            f"{sorted(fleet_pb2.TensorType.Name(value) for value in _PROTO_TO_DTYPE)}"
        ) from None


def dtype_for_ort_type(ort_type: str) -> np.dtype:
    """Return the numpy dtype of an onnxruntime type string such as ``"tensor(float)"``."""
    try:
        return _ORT_TYPE_TO_DTYPE[ort_type]
    except KeyError:
        raise InvalidInputError(f"unsupported onnxruntime tensor type {ort_type!r}") from None


def tensor_to_array(tensor: fleet_pb2.Tensor) -> np.ndarray:
    """Decode a ``Tensor`` message; raises ``InvalidInputError`` if data and shape disagree."""
    dtype = dtype_for_tensor_type(tensor.type)
    shape = tuple(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidInputError(f"tensor shape {list(shape)} has a negative dimension")
    expected_bytes = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected_bytes:
        raise InvalidInputError(
            f"tensor of shape {list(shape)} and type {dtype.name} needs {expected_bytes} bytes, "
            f"got {len(tensor.data)}"
        )
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def array_to_tensor(array: np.ndarray) -> fleet_pb2.Tensor:
    """Encode a numpy array as a ``Tensor`` message; raises ``InvalidInputError`` on its dtype."""
    native = array.dtype.newbyteorder("=")
    if native not in _DTYPE_TO_PROTO:
        raise InvalidInputError(f"unsupported array dtype {array.dtype.name}")
    tensor_type = _DTYPE_TO_PROTO[native]
    data = np.ascontiguousarray(array, dtype=_PROTO_TO_DTYPE[tensor_type]).tobytes()
    return fleet_pb2.Tensor(type=tensor_type, shape=list(array.shape), data=data)
