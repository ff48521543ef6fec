"""Knowledge distillation: train a student on a teacher's softened outputs.

The loss (``distillation_loss``) is defined here once and shared by every technique that
trains against a teacher: ``DistillationConfig`` as its own recipe step, the ``distill``
fields of ``StructuredPruningConfig``, and the candidates of architecture search.

A ``DistillationConfig`` step distils from ``TechniqueContext.teacher``, the model the
recipe started from, so it follows a step that changes the architecture (pruning, a
searched architecture).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from edgefleet.compress.configs import Stage, TechniqueConfig, register_config
from edgefleet.compress.dataset import Dataset
from edgefleet.compress.errors import ConfigError
from edgefleet.compress.handlers import TechniqueContext, register_handler

__all__ = [
    "DistillationConfig",
    "distill",
    "distillation_loss",
]


@register_config
@dataclasses.dataclass(frozen=True)
class DistillationConfig(TechniqueConfig):
    """Train the current model against the model it was derived from.

    The loss is ``alpha * s * KL(teacher_T || student_T) + (1 - alpha) * cross_entropy``
    where ``s`` is ``T^2`` when ``scale_by_temperature_squared`` is set and 1 otherwise.
    The step must follow a step that changes the architecture, such as pruning, because
    the teacher is the model that step started from.
    """

    TYPE: ClassVar[str] = "distillation"
    VERSION: ClassVar[int] = 1
    STAGE: ClassVar[Stage] = Stage.TORCH

    temperature: float = 4.0
    alpha: float = 0.7
    scale_by_temperature_squared: bool = True
    epochs: int = 3
    learning_rate: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 < self.temperature < 100.0:
            raise ConfigError(
                f"{self.TYPE}: temperature must be in (0, 100), got {self.temperature}"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{self.TYPE}: alpha must be in [0, 1], got {self.alpha}")
        if self.epochs < 1:
            raise ConfigError(f"{self.TYPE}: epochs must be >= 1, got {self.epochs}")
        if not 0.0 < self.learning_rate < 1.0:
            raise ConfigError(
                f"{self.TYPE}: learning_rate must be in (0, 1), got {self.learning_rate}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"{self.TYPE}: batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise ConfigError(f"{self.TYPE}: seed must be >= 0, got {self.seed}")

    def describe(self) -> str:
        return f"distil {self.epochs} ep (T={self.temperature:g}, alpha={self.alpha:g})"


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    scale_by_temperature_squared: bool = True,
) -> torch.Tensor:
    """Return ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross_entropy``.

    Softening both distributions by ``T`` shrinks the soft-target gradients by ``1/T^2``,
    so the KL term is scaled by ``T^2`` to keep its weight independent of ``T``
    (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015).
    """
    soft_student = F.log_softmax(student_logits / temperature, dim=1)
    soft_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    soft = F.kl_div(soft_student, soft_teacher, reduction="batchmean", log_target=True)
    if scale_by_temperature_squared:
        soft = soft * temperature**2
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


def distill(
    student: nn.Module,
    teacher: nn.Module | torch.Tensor,
    dataset: Dataset,
    config: DistillationConfig,
    *,
    progress: Callable[[str], None] | None = None,
) -> nn.Module:
    """Train ``student`` in place against ``teacher`` on the training split; return it.

    ``teacher`` is a module or its precomputed logits on ``dataset.x_train``, in order;
    logits save the teacher's forward passes when several students share one teacher.
    """
    # training.py imports distillation_loss from this module, so import it here, not above.
    from edgefleet.compress.training import train_classifier

    return train_classifier(
        student,
        dataset,
        epochs=config.epochs,
        seed=config.seed,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        teacher=teacher if isinstance(teacher, nn.Module) else None,
        teacher_logits=teacher if isinstance(teacher, torch.Tensor) else None,
        temperature=config.temperature,
        alpha=config.alpha,
        scale_by_temperature_squared=config.scale_by_temperature_squared,
        progress=progress,
    )


@register_handler(DistillationConfig)
def distill_step(
    config: DistillationConfig, module: nn.Module, context: TechniqueContext
) -> nn.Module:
    """Return a copy of ``module`` trained against ``context.teacher``.

    Raises ``ConfigError`` when the context has no teacher, or when ``module`` is the
    teacher itself because no earlier step of the recipe derived a student from it.
    """
    teacher = context.teacher
    if teacher is None or teacher is module:
        raise ConfigError(
            f"{config.describe()} has no teacher: put it after a step that changes the "
            "architecture, such as channel pruning or a searched architecture"
        )
    student = copy.deepcopy(module)
    distill(student, teacher.eval(), context.dataset, config, progress=context.progress)
    return student.eval()
