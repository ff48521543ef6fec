"""Supervised training and knowledge distillation for classifiers on a ``Dataset``."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgefleet.compress.dataset import Dataset
from edgefleet.compress.distillation import distillation_loss

__all__ = ["distillation_loss", "torch_accuracy", "train_classifier"]

logger = logging.getLogger(__name__)


def train_classifier(
    module: nn.Module,
    dataset: Dataset,
    *,
    epochs: int,
    seed: int = 0,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    teacher: nn.Module | None = None,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    scale_by_temperature_squared: bool = True,
    progress: Callable[[str], None] | None = None,
) -> nn.Module:
    """Train ``module`` in place with Adam on the training split and return it in eval mode.

    With a ``teacher`` the loss is ``distillation.distillation_loss`` against the
    teacher's logits; without one it is plain cross-entropy. ``teacher_logits``, the
    teacher's outputs on every training sample in order, replaces ``teacher`` and saves
    its forward passes. Batches are shuffled by a generator seeded
    with ``seed``, so a run is repeatable on the same machine and torch version.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train = torch.from_numpy(dataset.x_train)
    y_train = torch.from_numpy(dataset.y_train)
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    if teacher is not None and teacher_logits is None:
        teacher_logits = logits_of(teacher, x_train, batch_size=512)

    for epoch in range(epochs):
        module.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            inputs, labels = x_train[index], y_train[index]
            logits = module(inputs)
            if teacher_logits is None:
                loss = F.cross_entropy(logits, labels)
            else:
                loss = distillation_loss(
                    logits,
                    teacher_logits[index],
                    labels,
                    temperature=temperature,
                    alpha=alpha,
                    scale_by_temperature_squared=scale_by_temperature_squared,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(index)

        message = f"epoch {epoch + 1}/{epochs}: training loss {total_loss / len(order):.4f}"
        logger.debug(message)
        if progress is not None:
            progress(message)
    return module.eval()


@torch.no_grad()
def logits_of(module: nn.Module, inputs: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Return the outputs of ``module`` in eval mode on ``inputs``, computed in batches."""
    module.eval()
    return torch.cat(
        [module(inputs[start : start + batch_size]) for start in range(0, len(inputs), batch_size)]
    )


@torch.no_grad()
def torch_accuracy(
    module: nn.Module, inputs: np.ndarray, labels: np.ndarray, *, batch_size: int = 512
) -> float:
    """Return the top-1 accuracy (fraction 0..1) of ``module`` in eval mode."""
    module.eval()
    correct = 0
    for start in range(0, len(inputs), batch_size):
        logits = module(torch.from_numpy(inputs[start : start + batch_size]))
        correct += int((logits.argmax(dim=1).numpy() == labels[start : start + batch_size]).sum())
    return correct / len(inputs)
