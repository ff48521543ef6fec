"""Unstructured magnitude sparsity: zero the smallest weights, keep every tensor's shape.

What it buys is a smaller file after generic compression (zip, gzip), because runs of
zeros compress well. It does not make inference faster: onnxruntime's dense convolution
and matrix-multiply kernels on CPU do the same work for a zero as for any other value,
and the ONNX file itself stays the same size uncompressed. Use channel pruning for speed.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from edgefleet.compress.configs import Stage, TechniqueConfig, register_config
from edgefleet.compress.errors import ConfigError
from edgefleet.compress.handlers import TechniqueContext, register_handler
from edgefleet.compress.training import train_classifier

__all__ = [
    "MagnitudeSparsityConfig",
    "gzip_size",
    "sparsify_magnitude",
    "weight_sparsity",
]

_SPARSE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@register_config
@dataclasses.dataclass(frozen=True)
class MagnitudeSparsityConfig(TechniqueConfig):
    """Zero ``sparsity`` of the weights of every convolution and linear layer, by magnitude.

    Each layer loses the same fraction, its smallest absolute weights. With
    ``finetune_epochs`` the remaining weights are trained with the zeros held fixed.
    The result is only smaller after compression (gzip), never faster on dense kernels.
    """

    TYPE: ClassVar[str] = "magnitude_sparsity"
    VERSION: ClassVar[int] = 1
    STAGE: ClassVar[Stage] = Stage.TORCH

    sparsity: float = 0.5
    finetune_epochs: int = 0
    learning_rate: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"{self.TYPE}: sparsity must be in (0, 1), got {self.sparsity}")
        for name in ("finetune_epochs", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.TYPE}: {name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.learning_rate < 1.0:
            raise ConfigError(
                f"{self.TYPE}: learning_rate must be in (0, 1), got {self.learning_rate}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"{self.TYPE}: batch_size must be >= 1, got {self.batch_size}")

    def describe(self) -> str:
        tuned = f", {self.finetune_epochs} ep" if self.finetune_epochs else ""
        return f"sparsity {self.sparsity:.0%} (magnitude{tuned}; smaller zipped, not faster)"


def sparsify_magnitude(module: nn.Module, sparsity: float) -> dict[nn.Parameter, torch.Tensor]:
    """Zero the ``sparsity`` fraction of smallest weights of each layer, in place.

    Returns the keep mask (1 keeps, 0 zeroed) of every weight, for fine-tuning.
    """
    masks: dict[nn.Parameter, torch.Tensor] = {}
    with torch.no_grad():
        for layer in module.modules():
            if not isinstance(layer, _SPARSE_TYPES):
                continue
            weight = layer.weight
            count = int(weight.numel() * sparsity)
            if count == 0:
                continue
            threshold = weight.abs().flatten().kthvalue(count).values
            mask = (weight.abs() > threshold).to(weight.dtype)
            weight.mul_(mask)
            masks[weight] = mask
    return masks


def weight_sparsity(module: nn.Module) -> float:
    """Return the fraction of zero weights over all convolution and linear layers."""
    zeros = total = 0
    for layer in module.modules():
        if isinstance(layer, _SPARSE_TYPES):
            zeros += int((layer.weight == 0).sum())
            total += layer.weight.numel()
    return zeros / total if total else 0.0


def gzip_size(path: str | Path, *, level: int = 9) -> int:
    """Return the size in bytes of ``path`` after gzip at ``level``, the download size."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=level))


@register_handler(MagnitudeSparsityConfig)
def sparsity_step(
    config: MagnitudeSparsityConfig, module: nn.Module, context: TechniqueContext
) -> nn.Module:
    """Return a copy of ``module`` with ``config.sparsity`` of its weights zeroed."""
    student = copy.deepcopy(module).eval()
    masks = sparsify_magnitude(student, config.sparsity)
    if config.finetune_epochs:
        # Gradient hooks zero the updates of pruned weights. Adam's update of a weight
        # with a zero gradient and zero moments is zero, so pruned weights stay at zero.
        hooks = [weight.register_hook(_masked_gradient(mask)) for weight, mask in masks.items()]
        try:
            train_classifier(
                student,
                context.dataset,
                epochs=config.finetune_epochs,
                seed=config.seed,
                learning_rate=config.learning_rate,
                batch_size=config.batch_size,
                progress=context.progress,
            )
        finally:
            for hook in hooks:
                hook.remove()
    sparsity = weight_sparsity(student)
    context.details["weight_sparsity"] = sparsity
    context.progress(f"{config.describe()}: {sparsity:.1%} of weights are zero")
    return student.eval()


def _masked_gradient(mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda grad: grad * mask
