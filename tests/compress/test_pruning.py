from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compress_helpers import random_classification
from torch import nn

from edgefleet.compress import ImportanceCriterion, StructuredPruningConfig
from edgefleet.compress.handlers import TechniqueContext
from edgefleet.compress.pruning import prune_structured
from edgefleet.compress.training import distillation_loss


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = torch.relu(self.stem(x))
        return self.head((self.body(stem) + stem).mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(1, 12, 3, padding=1)
        self.right = nn.Conv2d(1, 20, 1)
        self.merge = nn.Conv2d(32, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        return self.head(torch.relu(self.merge(merged)).mean(dim=(2, 3)))


class DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(1, 24, 1)
        self.depthwise = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.project = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.depthwise(torch.relu(self.expand(x))))
        return self.head(torch.relu(self.project(hidden)).mean(dim=(2, 3)))


def _context(tmp_path: Path) -> TechniqueContext:
    dataset = random_classification(64, (1, 8, 8), classes=5)
    return TechniqueContext(dataset=dataset, work_dir=tmp_path, progress=lambda _line: None)


def _channel_counts(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(param.shape) for name, param in module.named_parameters()}


@pytest.mark.parametrize("model_type", [ResidualNet, ConcatNet, DepthwiseNet])
@pytest.mark.parametrize("importance", list(ImportanceCriterion))
def test_pruning_shrinks_tensors_and_keeps_output(model_type, importance, tmp_path):
    torch.manual_seed(0)
    model = model_type().eval()
    before = _channel_counts(model)
    context = _context(tmp_path)
    config = StructuredPruningConfig(ratio=0.5, importance=importance, finetune_epochs=1)

    pruned = prune_structured(config, model, context)

    after = _channel_counts(pruned)
    assert _channel_counts(model) == before, "the input model must stay untouched"
    assert sum(torch.Size(s).numel() for s in after.values()) < sum(
        torch.Size(s).numel() for s in before.values()
    )
    shrunk = [name for name in before if after[name] != before[name]]
    assert len(shrunk) >= 2, f"only {shrunk} shrank"
    assert after["head.weight"][0] == 5
    sample = torch.from_numpy(context.dataset.x_val[:3])
    assert pruned(sample).shape == (3, 5)
    assert context.details["macs_after"] < context.details["macs_before"]


def test_pruning_concat_branches_both_shrink(tmp_path):
    torch.manual_seed(0)
    pruned = prune_structured(
        StructuredPruningConfig(ratio=0.5, finetune_epochs=0),
        ConcatNet().eval(),
        _context(tmp_path),
    )
    assert pruned.left.out_channels == 6
    assert pruned.right.out_channels == 10
    assert pruned.merge.in_channels == 16


def test_pruning_depthwise_stays_depthwise(tmp_path):
    torch.manual_seed(0)
    pruned = prune_structured(
        StructuredPruningConfig(ratio=0.5, finetune_epochs=0),
        DepthwiseNet().eval(),
        _context(tmp_path),
    )
    assert pruned.depthwise.groups == pruned.depthwise.in_channels == pruned.depthwise.out_channels
    assert pruned.depthwise.out_channels == pruned.expand.out_channels < 24


def test_distillation_loss_scales_soft_term_by_temperature_squared():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    soft_only_t1 = distillation_loss(student, teacher, labels, temperature=1.0, alpha=1.0)
    hard_only = distillation_loss(student, teacher, labels, temperature=3.0, alpha=0.0)
    same = distillation_loss(teacher, teacher, labels, temperature=3.0, alpha=1.0)
    assert soft_only_t1 > 0
    assert torch.isclose(hard_only, torch.nn.functional.cross_entropy(student, labels))
    assert torch.isclose(same, torch.tensor(0.0), atol=1e-6)
