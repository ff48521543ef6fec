from __future__ import annotations

import pytest
import torch
from compress_helpers import random_classification

from edgefleet.compress import ConfigError, Recipe
from edgefleet.compress.cache import ArtifactCache
from edgefleet.compress.distillation import DistillationConfig, distill_step, distillation_loss
from edgefleet.compress.handlers import TechniqueContext
from edgefleet.compress.pipeline import apply_recipe
from edgefleet.compress.pruning import ChannelPruningConfig


def test_loss_without_temperature_scaling_divides_by_t_squared():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    scaled = distillation_loss(student, teacher, labels, temperature=3.0, alpha=1.0)
    unscaled = distillation_loss(
        student, teacher, labels, temperature=3.0, alpha=1.0, scale_by_temperature_squared=False
    )
    assert torch.isclose(scaled, unscaled * 9.0)


def test_loss_mixes_soft_and_hard_terms():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    soft = distillation_loss(student, teacher, labels, temperature=2.0, alpha=1.0)
    hard = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.0)
    mixed = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.25)
    assert torch.isclose(mixed, 0.25 * soft + 0.75 * hard)


def test_distillation_without_teacher_is_rejected(tmp_path):
    dataset = random_classification(32, (4,), classes=3)
    context = TechniqueContext(dataset=dataset, work_dir=tmp_path, progress=lambda _line: None)
    with pytest.raises(ConfigError, match="no teacher"):
        distill_step(DistillationConfig(epochs=1), torch.nn.Linear(4, 3), context)


def test_distillation_of_teacher_itself_is_rejected(tmp_path):
    dataset = random_classification(32, (4,), classes=3)
    teacher = torch.nn.Linear(4, 3)
    context = TechniqueContext(
        dataset=dataset, work_dir=tmp_path, progress=lambda _line: None, teacher=teacher
    )
    with pytest.raises(ConfigError, match="no teacher"):
        distill_step(DistillationConfig(epochs=1), teacher, context)


def test_distillation_moves_student_toward_context_teacher(tmp_path):
    torch.manual_seed(0)
    dataset = random_classification(64, (4,), classes=3)
    teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    context = TechniqueContext(
        dataset=dataset, work_dir=tmp_path, progress=lambda _line: None, teacher=teacher
    )
    inputs = torch.from_numpy(dataset.x_train)

    distilled = distill_step(
        DistillationConfig(epochs=20, alpha=1.0, learning_rate=0.05), student, context
    )

    with torch.no_grad():
        before = torch.mean((student(inputs) - teacher(inputs)) ** 2)
        after = torch.mean((distilled(inputs) - teacher(inputs)) ** 2)
    assert after < before / 2


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 0.0), ("alpha", 1.5), ("epochs", 0), ("learning_rate", 2.0)],
)
def test_distillation_config_rejects_out_of_range(field, value):
    with pytest.raises(ConfigError, match=field):
        DistillationConfig(**{field: value})


def test_prune_then_distil_recipe_recovers(small_cnn, small_digits, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    prune = ChannelPruningConfig(ratio=0.5)
    recipe = Recipe([prune, DistillationConfig(epochs=2, learning_rate=2e-3)])
    assert Recipe.from_json(recipe.to_json()) == recipe

    pruned = apply_recipe(small_cnn, Recipe([prune]), small_digits, cache=cache)
    distilled = apply_recipe(small_cnn, recipe, small_digits, cache=cache)

    assert distilled.accuracy > pruned.accuracy
    assert distilled.details["macs_after"] < distilled.details["macs_before"]
