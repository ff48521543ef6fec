from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compress_helpers import random_classification
from torch import nn

from edgefleet.compress import (
    ConfigError,
    ImportanceCriterion,
    Recipe,
    StructuredPruningConfig,
    config_from_dict,
)
from edgefleet.compress.distillation import DistillationConfig, distill_step
from edgefleet.compress.handlers import TechniqueContext
from edgefleet.compress.pruning import ChannelPruningConfig, prune_channel_step, prune_structured
from edgefleet.compress.training import distillation_loss, torch_accuracy


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


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.grouped(torch.relu(self.stem(x))))
        return self.head(hidden.mean(dim=(2, 3)))


@pytest.mark.parametrize("model_type", [ResidualNet, ConcatNet, DepthwiseNet, GroupedNet])
@pytest.mark.parametrize("steps", [1, 3])
def test_channel_pruning_schedule_shrinks(model_type, steps, tmp_path):
    torch.manual_seed(0)
    model = model_type().eval()
    context = _context(tmp_path)
    config = ChannelPruningConfig(
        ratio=0.5, importance="taylor", iterative_steps=steps, epochs_between_steps=1
    )

    pruned = prune_channel_step(config, model, context)

    assert context.details["params_after"] < context.details["params_before"]
    assert context.details["macs_after"] < context.details["macs_before"]
    sample = torch.from_numpy(context.dataset.x_val[:3])
    assert pruned(sample).shape == (3, 5)


def test_grouped_conv_keeps_groups_divisible(tmp_path):
    torch.manual_seed(0)
    pruned = prune_channel_step(
        ChannelPruningConfig(ratio=0.5), GroupedNet().eval(), _context(tmp_path)
    )
    grouped = pruned.grouped
    assert grouped.groups == 4
    assert grouped.in_channels % grouped.groups == 0
    assert grouped.out_channels % grouped.groups == 0
    assert grouped.in_channels == pruned.stem.out_channels < 16


def test_global_ranking_prunes_layers_unevenly(tmp_path):
    torch.manual_seed(0)
    model = ConcatNet().eval()
    with torch.no_grad():
        model.left.weight.mul_(10.0)  # the left branch's channels all rank as important
    config = ChannelPruningConfig(ratio=0.5, global_ranking=True, max_layer_ratio=0.9)
    pruned = prune_channel_step(config, model, _context(tmp_path))
    assert pruned.left.out_channels > pruned.right.out_channels * 12 / 20


def test_channel_pruning_config_round_trips():
    config = ChannelPruningConfig(ratio=0.3, importance="taylor", iterative_steps=4, round_to=8)
    assert Recipe.from_json(Recipe([config]).to_json()) == Recipe([config])
    with pytest.raises(ConfigError, match="iterative_steps"):
        ChannelPruningConfig(iterative_steps=0)


def test_structured_pruning_version1_json_still_loads():
    data = {
        "type": "structured_pruning",
        "version": 1,
        "fields": {"ratio": 0.4, "distill": True, "temperature": 3.0, "alpha": 0.5},
    }
    config = config_from_dict(data)
    assert isinstance(config, StructuredPruningConfig)
    assert config.temperature == 3.0


def test_pruned_digits_cnn_keeps_accuracy(small_cnn, small_digits, tmp_path):
    context = TechniqueContext(
        dataset=small_digits, work_dir=tmp_path, progress=lambda _l: None, teacher=small_cnn
    )
    before = torch_accuracy(small_cnn, small_digits.x_val, small_digits.y_val)
    pruned = prune_channel_step(ChannelPruningConfig(ratio=0.3), small_cnn, context)
    recovered = distill_step(DistillationConfig(epochs=2), pruned, context)
    after = torch_accuracy(recovered, small_digits.x_val, small_digits.y_val)
    assert after >= before - 0.1, f"accuracy fell from {before:.3f} to {after:.3f}"
