"""Weights and datasets are never unpickled: a pickle that runs code is rejected, unrun."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgefleet.compress import load_torch_model
from edgefleet.compress.dataset import load_dataset
from edgefleet.compress.errors import DatasetError, ModelLoadError


class _Payload:
    """Unpickling this creates ``marker``: proof that a file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _factory_file(tmp_path: Path) -> str:
    source = tmp_path / "tiny_model.py"
    source.write_text(
        "from torch import nn\n\ndef build():\n    return nn.Linear(2, 2)\n", encoding="utf-8"
    )
    return f"{source}:build"


def test_weights_with_code_rejected_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    weights = tmp_path / "weights.pt"
    state = nn.Linear(2, 2).state_dict()
    state["extra"] = _Payload(marker)  # type: ignore[assignment]
    torch.save(state, weights)

    with pytest.raises(ModelLoadError, match="pickled Python objects") as caught:
        load_torch_model(_factory_file(tmp_path), weights=weights)

    assert not marker.exists()
    assert "torch.save(model.state_dict(), path)" in str(caught.value)


def test_plain_pickle_weights_rejected_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    weights = tmp_path / "weights.pkl"
    weights.write_bytes(pickle.dumps(_Payload(marker), protocol=2))

    with pytest.raises(ModelLoadError):
        load_torch_model(_factory_file(tmp_path), weights=weights)

    assert not marker.exists()


def test_state_dict_weights_load(tmp_path: Path) -> None:
    source = nn.Linear(2, 2)
    weights = tmp_path / "weights.pt"
    torch.save(source.state_dict(), weights)

    model = load_torch_model(_factory_file(tmp_path), weights=weights)

    assert torch.equal(model.weight, source.weight)


def test_dataset_with_object_array_rejected_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "data.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    numeric = np.zeros((4, 2), dtype=np.float32)
    labels = np.zeros(4, dtype=np.int64)
    np.savez(path, x_train=payload, y_train=labels, x_val=numeric, y_val=labels)

    with pytest.raises(DatasetError, match="pickled object arrays"):
        load_dataset(path)

    assert not marker.exists()


def test_pickle_file_as_dataset_rejected_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "data.npz"
    path.write_bytes(pickle.dumps(_Payload(marker)))

    with pytest.raises(DatasetError, match=r"is not an \.npz archive"):
        load_dataset(path)

    assert not marker.exists()
