from __future__ import annotations

import torch
from compress_helpers import random_classification
from torch import nn

from edgefleet.compress import export_onnx
from edgefleet.compress.handlers import TechniqueContext
from edgefleet.compress.sparsity import (
    MagnitudeSparsityConfig,
    gzip_size,
    sparsify_magnitude,
    sparsity_step,
    weight_sparsity,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4))


def test_sparsify_zeroes_smallest_weights():
    model = _model()
    largest = model[1].weight.abs().max().item()
    sparsify_magnitude(model, 0.75)
    assert abs(weight_sparsity(model) - 0.75) < 0.01
    assert model[1].weight.abs().max().item() == largest


def test_finetuning_keeps_zeros_and_shapes(tmp_path):
    dataset = random_classification(64, (1, 8, 8), classes=4)
    context = TechniqueContext(dataset=dataset, work_dir=tmp_path, progress=lambda _line: None)
    model = _model()
    sparse = sparsity_step(MagnitudeSparsityConfig(sparsity=0.6, finetune_epochs=1), model, context)
    assert context.details["weight_sparsity"] >= 0.59
    assert sparse[1].weight.shape == model[1].weight.shape
    assert weight_sparsity(model) == 0.0, "the input model must stay untouched"


def test_sparse_onnx_is_same_size_but_smaller_gzipped(tmp_path):
    dense = _model().eval()
    sparse = _model().eval()
    sparsify_magnitude(sparse, 0.9)
    sample = torch.rand(2, 1, 8, 8).numpy()
    dense_path = export_onnx(dense, sample, tmp_path / "dense.onnx")
    sparse_path = export_onnx(sparse, sample, tmp_path / "sparse.onnx")
    assert abs(sparse_path.stat().st_size - dense_path.stat().st_size) < 1024
    assert gzip_size(sparse_path) < 0.5 * gzip_size(dense_path)
