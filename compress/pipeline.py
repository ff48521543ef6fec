"""``apply_recipe``: run a recipe's steps through their registered handlers.

Torch-stage steps run first on a copy of the model; the result is exported to ONNX and
gated against the torch model it came from. ONNX-stage steps then run one after another
on files. Every intermediate artifact is cached under the digest of (source model,
dataset, recipe prefix), so recipes that share a prefix share its work: "prune 50%" and
"prune 50% + int8" prune and fine-tune once.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

# Importing the technique modules registers their configs and handlers.
from edgefleet.compress import distillation as _distillation  # noqa: F401
from edgefleet.compress import pruning as _pruning  # noqa: F401
from edgefleet.compress import quantization as _quantization  # noqa: F401
from edgefleet.compress import search as _search  # noqa: F401
from edgefleet.compress import sparsity as _sparsity  # noqa: F401
from edgefleet.compress import transformer as _transformer  # noqa: F401
from edgefleet.compress.cache import ArtifactCache, CachedArtifact, cache_key, file_sha256
from edgefleet.compress.configs import Recipe
from edgefleet.compress.dataset import Dataset
from edgefleet.compress.errors import ConfigError
from edgefleet.compress.export import (
    ONNX_OPSET,
    check_onnx_file,
    export_onnx,
    verify_against_torch,
)
from edgefleet.compress.handlers import TechniqueContext, handler_for
from edgefleet.compress.modelio import module_digest
from edgefleet.compress.runtime import create_session, onnx_accuracy

__all__ = ["Artifact", "apply_recipe", "source_digest"]

logger = logging.getLogger(__name__)

# Validation samples compared between torch and onnxruntime at the export gate.
_GATE_SAMPLES = 256


@dataclasses.dataclass(frozen=True)
class Artifact:
    """The ONNX file one recipe produced, with its validation accuracy and measurements."""

    recipe: Recipe
    path: Path
    sha256: str
    accuracy: float
    quantized: bool
    details: dict[str, Any]


def source_digest(model: nn.Module | Path) -> str:
    """Return the digest that identifies ``model`` in cache keys."""
    if isinstance(model, nn.Module):
        return "torch:" + module_digest(model)
    return "onnx:" + file_sha256(model)


def apply_recipe(
    model: nn.Module | Path,
    recipe: Recipe,
    dataset: Dataset,
    *,
    cache: ArtifactCache,
    progress: Callable[[str], None] | None = None,
) -> Artifact:
    """Apply ``recipe`` to ``model`` (a torch module or an ONNX file) and return the result.

    Raises ``ConfigError`` for torch-stage steps on an ONNX model, and the handlers'
    ``CompressError`` subclasses (``VerificationError`` among them) when a step fails.
    """
    recipe = Recipe(recipe)
    report = progress or (lambda _message: None)
    if not isinstance(model, nn.Module) and recipe.torch_steps:
        raise ConfigError(
            f"recipe {recipe.name} has torch steps ({recipe.torch_steps[0].describe()}) but "
            "the model is an ONNX file; only ONNX-stage techniques such as static "
            "quantization apply to ONNX models"
        )
    source = source_digest(model)
    base = _float_artifact(model, Recipe(recipe.torch_steps), dataset, source, cache, report)
    current, accuracy = base.path, float(base.meta["accuracy"])
    details: dict[str, Any] = dict(base.meta.get("details", {}))
    prefix = list(recipe.torch_steps)

    for step in recipe.onnx_steps:
        prefix.append(step)
        key = _key(source, dataset, Recipe(prefix))
        cached = cache.get(key)
        if cached is None:
            report(f"{Recipe(prefix).name}: applying {step.describe()}")
            context = TechniqueContext(
                dataset=dataset, work_dir=cache.root, progress=report, parent_accuracy=accuracy
            )
            with tempfile.TemporaryDirectory(prefix="edgefleet-step-") as scratch:
                output = handler_for(step)(step, current, Path(scratch) / "model.onnx", context)
                step_accuracy = onnx_accuracy(
                    create_session(output, threads=1), dataset.x_val, dataset.y_val
                )
                cached = cache.put(
                    key, output, {"accuracy": step_accuracy, "details": context.details}
                )
        else:
            report(f"{Recipe(prefix).name}: reusing cached artifact {cached.sha256[:16]}")
        current, accuracy = cached.path, float(cached.meta["accuracy"])
        details.update(cached.meta.get("details", {}))

    return Artifact(
        recipe=recipe,
        path=current,
        sha256=file_sha256(current),
        accuracy=accuracy,
        quantized=bool(recipe.onnx_steps),
        details=details,
    )


def _float_artifact(
    model: nn.Module | Path,
    torch_recipe: Recipe,
    dataset: Dataset,
    source: str,
    cache: ArtifactCache,
    report: Callable[[str], None],
) -> CachedArtifact:
    key = _key(source, dataset, torch_recipe)
    cached = cache.get(key)
    if cached is not None:
        report(f"{torch_recipe.name}: reusing cached artifact {cached.sha256[:16]}")
        return cached
    if not isinstance(model, nn.Module):
        check_onnx_file(model)
        accuracy = onnx_accuracy(create_session(model, threads=1), dataset.x_val, dataset.y_val)
        return cache.put(key, model, {"accuracy": accuracy, "details": {}})

    context = TechniqueContext(
        dataset=dataset, work_dir=cache.root, progress=report, teacher=model.eval()
    )
    module = model
    for step in torch_recipe:
        report(f"{torch_recipe.name}: applying {step.describe()}")
        module = handler_for(step)(step, module, context)

    # The export gate: checker, onnxruntime load, numeric comparison with the torch model.
    with tempfile.TemporaryDirectory(prefix="edgefleet-export-") as scratch:
        exported = export_onnx(module, dataset.x_val, Path(scratch) / "model.onnx")
        verification = verify_against_torch(exported, module, dataset.x_val[:_GATE_SAMPLES])
        accuracy = onnx_accuracy(create_session(exported, threads=1), dataset.x_val, dataset.y_val)
        report(
            f"{torch_recipe.name}: exported to ONNX opset {ONNX_OPSET}, max difference from "
            f"torch {verification.max_abs_diff:.2g}, val accuracy {accuracy:.4f}"
        )
        meta = {
            "accuracy": accuracy,
            "details": context.details,
            "export_verification": verification.to_dict(),
        }
        return cache.put(key, exported, meta)


def _key(source: str, dataset: Dataset, recipe: Recipe) -> str:
    return cache_key(
        source=source, dataset=dataset.digest, recipe=recipe.to_json(), opset=ONNX_OPSET
    )


def copy_artifact(artifact: Artifact, directory: Path, name: str) -> Path:
    """Copy ``artifact`` into ``directory`` as ``name`` and return the new path."""
    directory.mkdir(parents=True, exist_ok=True)
    destination = directory / name
    shutil.copyfile(artifact.path, destination)
    return destination
