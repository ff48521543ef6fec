"""Structured channel pruning with torch-pruning, followed by fine-tuning."""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from edgefleet.compress.configs import ImportanceCriterion, StructuredPruningConfig
from edgefleet.compress.errors import CompressError
from edgefleet.compress.handlers import TechniqueContext, register_handler
from edgefleet.compress.training import train_classifier

__all__ = ["count_macs_and_params", "prune_structured"]

logger = logging.getLogger(__name__)

# Taylor importance accumulates gradients of the loss over this many training batches.
_TAYLOR_BATCHES = 8
_PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@register_handler(StructuredPruningConfig)
def prune_structured(
    config: StructuredPruningConfig, module: nn.Module, context: TechniqueContext
) -> nn.Module:
    """Return a copy of ``module`` with ``config.ratio`` of its channels removed, fine-tuned.

    The last convolution or linear layer to run produces the model output and is never
    pruned on its output side, so the number of classes stays the same.
    """
    teacher = module.eval()
    student = copy.deepcopy(module).eval()
    example = torch.from_numpy(context.dataset.x_train[:2])

    # 1. Find the output layer and the cost before pruning.
    output_layer = _last_prunable_layer(student, example)
    with torch.no_grad():
        output_shape = tuple(student(example).shape)
    macs_before, params_before = count_macs_and_params(student, example)

    # 2. Rank channels and remove the least important ones.
    importance = _importance(config)
    pruner = tp.pruner.MetaPruner(
        student,
        example,
        importance=importance,
        pruning_ratio=config.ratio,
        ignored_layers=[output_layer],
        round_to=config.round_to,
    )
    if config.importance is ImportanceCriterion.TAYLOR:
        _accumulate_gradients(student, context, config.batch_size)
    pruner.step()
    student.zero_grad(set_to_none=True)

    # 3. Check that tensors really shrank and the output kept its shape.
    macs_after, params_after = count_macs_and_params(student, example)
    with torch.no_grad():
        pruned_shape = tuple(student(example).shape)
    if pruned_shape != output_shape:
        raise CompressError(
            f"pruning changed the output shape from {output_shape} to {pruned_shape}"
        )
    if params_after >= params_before:
        raise CompressError(
            f"{config.describe()} removed no parameters from {type(module).__name__}; the "
            "model has no prunable channel groups besides its output layer"
        )
    context.details.update(
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
    )
    context.progress(
        f"pruned {config.ratio:.0%} of channels: MACs {macs_before:,} -> {macs_after:,}, "
        f"parameters {params_before:,} -> {params_after:,}"
    )

    # 4. Recover accuracy, optionally distilling from the unpruned model.
    if config.finetune_epochs:
        train_classifier(
            student,
            context.dataset,
            epochs=config.finetune_epochs,
            seed=config.seed,
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            teacher=teacher if config.distill else None,
            temperature=config.temperature,
            alpha=config.alpha,
            progress=context.progress,
        )
    return student.eval()


def count_macs_and_params(module: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Return multiply-accumulate operations per sample and the parameter count."""
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(module, example[:1])
    return int(macs), int(params)


def _importance(config: StructuredPruningConfig) -> tp.importance.Importance:
    if config.importance is ImportanceCriterion.TAYLOR:
        return tp.importance.TaylorImportance()
    return tp.importance.MagnitudeImportance(p=2)


def _last_prunable_layer(module: nn.Module, example: torch.Tensor) -> nn.Module:
    executed: list[nn.Module] = []
    hooks = [
        layer.register_forward_hook(lambda layer, _inputs, _output: executed.append(layer))
        for layer in module.modules()
        if isinstance(layer, _PRUNABLE_TYPES)
    ]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not executed:
        raise CompressError(f"{type(module).__name__} has no convolution or linear layer to prune")
    return executed[-1]


def _accumulate_gradients(module: nn.Module, context: TechniqueContext, batch_size: int) -> None:
    # Taylor importance reads .grad of each weight, so the loss gradients must be in place
    # before pruner.step(). Eval mode keeps batch-norm statistics unchanged.
    module.eval()
    module.zero_grad(set_to_none=True)
    x_train = torch.from_numpy(context.dataset.x_train)
    y_train = torch.from_numpy(context.dataset.y_train)
    for start in range(0, min(len(x_train), batch_size * _TAYLOR_BATCHES), batch_size):
        logits = module(x_train[start : start + batch_size])
        F.cross_entropy(logits, y_train[start : start + batch_size]).backward()
