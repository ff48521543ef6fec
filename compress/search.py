"""Hardware-aware architecture search over the MobileNetV2-style family.

Candidates are scored on two objectives: validation accuracy after a short distillation
from the user's model, and batch-1 latency measured with onnxruntime at the profile's
thread count. An evolutionary search (mutate a member of the current Pareto front,
keep every result) runs until its time limit and returns the Pareto front.

Weight sharing: a mutated child inherits its parent's trained weights wherever the
parameter names match, sliced to the child's shape (leading channels, centred kernel),
so children need fewer distillation epochs than the randomly initialised first
population. A found architecture is expressed as a ``SearchedArchitectureConfig``,
whose handler builds it and distils it from the input model for ``epochs`` epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import random
import tempfile
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from edgefleet.compress.configs import Stage, TechniqueConfig, _coerce, register_config
from edgefleet.compress.dataset import Dataset
from edgefleet.compress.distillation import DistillationConfig, distill
from edgefleet.compress.errors import ConfigError
from edgefleet.compress.export import export_onnx
from edgefleet.compress.handlers import TechniqueContext, register_handler
from edgefleet.compress.measure import measure_latency
from edgefleet.compress.mobilenet import MobileNetSpec, MobileNetV2Family, StageSpec
from edgefleet.compress.pruning import count_macs_and_params
from edgefleet.compress.training import logits_of, torch_accuracy

__all__ = [
    "SearchCandidate",
    "SearchResult",
    "SearchSpace",
    "SearchedArchitectureConfig",
    "digits_search_space",
    "pareto_front",
    "search_architectures",
]

logger = logging.getLogger(__name__)

_TUPLE_FIELDS = ("widths", "depths", "kernels", "expansions", "strides")


@register_config
@dataclasses.dataclass(frozen=True)
class SearchedArchitectureConfig(TechniqueConfig):
    """Replace the model by a MobileNetV2-style network distilled from it.

    The tuples give one value per stage. Input channels and the number of classes come
    from the dataset. The new network is trained for ``epochs`` epochs against the input
    model's softened outputs (``DistillationConfig`` semantics).
    """

    TYPE: ClassVar[str] = "searched_architecture"
    VERSION: ClassVar[int] = 1
    STAGE: ClassVar[Stage] = Stage.TORCH

    resolution: int = 8
    stem_width: int = 16
    widths: tuple[int, ...] = (16, 24, 32)
    depths: tuple[int, ...] = (1, 2, 2)
    kernels: tuple[int, ...] = (3, 3, 3)
    expansions: tuple[int, ...] = (4, 4, 4)
    strides: tuple[int, ...] = (1, 2, 2)
    stem_stride: int = 1
    head_width: int = 128
    epochs: int = 15
    temperature: float = 4.0
    alpha: float = 0.7
    learning_rate: float = 3e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        # The shared field checks know scalars and enums only, so the per-stage tuples
        # (JSON lists when read back) are checked here and the rest go through them.
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, list | tuple) or not all(
                isinstance(item, int) and not isinstance(item, bool) for item in value
            ):
                raise ConfigError(f"{self.TYPE}: {name} must be a list of integers, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            if field.name not in _TUPLE_FIELDS:
                value = getattr(self, field.name)
                coerced = _coerce(self.TYPE, field.name, value, hints[field.name])
                object.__setattr__(self, field.name, coerced)
        self.validate()

    def validate(self) -> None:
        lengths = {len(getattr(self, name)) for name in _TUPLE_FIELDS}
        if len(lengths) != 1 or 0 in lengths:
            raise ConfigError(
                f"{self.TYPE}: {', '.join(_TUPLE_FIELDS)} must be non-empty and of one length"
            )
        if self.epochs < 1:
            raise ConfigError(f"{self.TYPE}: epochs must be >= 1, got {self.epochs}")
        try:
            self.spec(in_channels=1, num_classes=2)
        except ValueError as exc:
            raise ConfigError(f"{self.TYPE}: invalid architecture: {exc}") from exc
        self.distillation()  # checks temperature, alpha, learning_rate, batch_size, seed

    def describe(self) -> str:
        return f"searched net ({self.spec(in_channels=1, num_classes=2).label()}, {self.epochs} ep)"

    def spec(self, *, in_channels: int, num_classes: int) -> MobileNetSpec:
        """Return the ``MobileNetSpec`` for inputs of ``in_channels`` and ``num_classes``."""
        stages = tuple(
            StageSpec(width=w, depth=d, kernel=k, expansion=e, stride=s)
            for w, d, k, e, s in zip(
                self.widths, self.depths, self.kernels, self.expansions, self.strides, strict=True
            )
        )
        return MobileNetSpec(
            resolution=self.resolution,
            stem_width=self.stem_width,
            stages=stages,
            head_width=self.head_width,
            stem_stride=self.stem_stride,
            in_channels=in_channels,
            num_classes=num_classes,
        )

    def distillation(self) -> DistillationConfig:
        """Return the distillation settings the handler trains with."""
        return DistillationConfig(
            temperature=self.temperature,
            alpha=self.alpha,
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for name in _TUPLE_FIELDS:
            data["fields"][name] = list(data["fields"][name])
        return data


def build_searched_architecture(
    config: SearchedArchitectureConfig, dataset: Dataset
) -> MobileNetV2Family:
    """Build the untrained network of ``config`` for ``dataset``'s inputs and classes."""
    if len(dataset.sample_shape) != 3:
        raise ConfigError(
            f"a searched architecture needs image inputs (channels, height, width), got "
            f"samples of shape {dataset.sample_shape}"
        )
    torch.manual_seed(config.seed)
    spec = config.spec(in_channels=dataset.sample_shape[0], num_classes=dataset.num_classes)
    return MobileNetV2Family(spec)


@register_handler(SearchedArchitectureConfig)
def searched_architecture_step(
    config: SearchedArchitectureConfig, module: nn.Module, context: TechniqueContext
) -> nn.Module:
    """Return the network of ``config`` distilled from ``module``."""
    teacher = module.eval()
    student = build_searched_architecture(config, context.dataset)
    example = torch.from_numpy(context.dataset.x_train[:1])
    macs, params = count_macs_and_params(student.eval(), example)
    context.details.update(searched_macs=float(macs), searched_params=float(params))
    context.progress(f"{config.describe()}: {macs:,} MACs, {params:,} parameters")
    distill(student, teacher, context.dataset, config.distillation(), progress=context.progress)
    return student.eval()


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Choices per stage; every stage takes its width from its own list.

    ``strides`` is fixed per stage and ``resolutions`` are the input sizes to try.
    """

    resolutions: tuple[int, ...]
    widths: tuple[tuple[int, ...], ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expansions: tuple[int, ...]
    strides: tuple[int, ...]
    stem_width: int
    head_width: int
    stem_stride: int = 1

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """Return a random point of the space as ``SearchedArchitectureConfig`` fields."""
        stages = len(self.strides)
        return {
            "resolution": rng.choice(self.resolutions),
            "widths": tuple(rng.choice(options) for options in self.widths),
            "depths": tuple(rng.choice(self.depths) for _ in range(stages)),
            "kernels": tuple(rng.choice(self.kernels) for _ in range(stages)),
            "expansions": tuple(rng.choice(self.expansions) for _ in range(stages)),
        }

    def mutate(self, point: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """Return a copy of ``point`` with one or two genes resampled."""
        child = {
            key: list(value) if isinstance(value, tuple) else value for key, value in point.items()
        }
        for _ in range(rng.choice((1, 2))):
            gene = rng.choice(("resolution", "widths", "depths", "kernels", "expansions"))
            if gene == "resolution":
                child["resolution"] = rng.choice(self.resolutions)
                continue
            stage = rng.randrange(len(self.strides))
            options = {
                "widths": self.widths[stage],
                "depths": self.depths,
                "kernels": self.kernels,
                "expansions": self.expansions,
            }[gene]
            child[gene][stage] = rng.choice(options)
        return {
            key: tuple(value) if isinstance(value, list) else value for key, value in child.items()
        }

    def config(self, point: dict[str, Any], **training: Any) -> SearchedArchitectureConfig:
        """Return the config of ``point`` with ``training`` settings (epochs, seed, ...)."""
        return SearchedArchitectureConfig(
            stem_width=self.stem_width,
            head_width=self.head_width,
            stem_stride=self.stem_stride,
            strides=self.strides,
            **point,
            **training,
        )


def digits_search_space() -> SearchSpace:
    """Return a space sized for 8x8 single-channel inputs such as scikit-learn's digits."""
    return SearchSpace(
        resolutions=(8, 12, 16),
        widths=((8, 16, 24), (16, 24, 32), (24, 32, 48)),
        depths=(1, 2, 3),
        kernels=(3, 5),
        expansions=(2, 4, 6),
        strides=(1, 2, 2),
        stem_width=16,
        head_width=128,
    )


@dataclasses.dataclass(frozen=True)
class SearchCandidate:
    """One evaluated architecture: its config and its measured objectives."""

    config: SearchedArchitectureConfig
    accuracy: float
    latency_ms: float
    macs: int
    params: int
    inherited: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "accuracy": self.accuracy,
            "latency_ms": self.latency_ms,
            "macs": self.macs,
            "params": self.params,
            "inherited": self.inherited,
        }


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Every candidate evaluated, the Pareto front (fastest first) and the time spent."""

    candidates: tuple[SearchCandidate, ...]
    front: tuple[SearchCandidate, ...]
    elapsed_s: float
    threads: int


def search_architectures(
    teacher: nn.Module,
    dataset: Dataset,
    *,
    threads: int,
    time_limit_s: float,
    space: SearchSpace | None = None,
    population: int = 8,
    initial_epochs: int = 3,
    child_epochs: int = 1,
    final_epochs: int = 15,
    max_candidates: int | None = None,
    latency_runs: int = 50,
    seed: int = 0,
    latency_fn: Callable[[nn.Module, np.ndarray], float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Search ``space`` for architectures that trade accuracy against latency.

    1. ``population`` random architectures are distilled from ``teacher`` for
       ``initial_epochs`` epochs each.
    2. Until ``time_limit_s`` (or ``max_candidates``) runs out, a random member of the
       Pareto front is mutated; the child inherits its weights and is distilled for
       ``child_epochs`` epochs.

    Latency is the batch-1 p50 in milliseconds of the exported ONNX graph under
    onnxruntime at ``threads`` threads, unless ``latency_fn(model, sample)`` is given.
    The candidates' configs carry ``final_epochs``, the training the recipe step runs.
    A candidate that would start after the time limit is not started, but one that
    started is finished, so the search overshoots by at most one evaluation.
    """
    if time_limit_s <= 0:
        raise ConfigError(f"time_limit_s must be positive, got {time_limit_s}")
    space = space or digits_search_space()
    report = progress or (lambda _message: None)
    rng = random.Random(seed)
    teacher = teacher.eval()
    started = time.monotonic()
    deadline = started + time_limit_s
    measure = latency_fn or _onnx_latency(threads, latency_runs)
    teacher_logits = logits_of(teacher, torch.from_numpy(dataset.x_train))

    evaluated: dict[str, tuple[SearchCandidate, dict[str, torch.Tensor], dict[str, Any]]] = {}
    slowest_s = 0.0

    def budget_left() -> bool:
        if max_candidates is not None and len(evaluated) >= max_candidates:
            return False
        return time.monotonic() + slowest_s <= deadline

    def evaluate(point: dict[str, Any], parent: dict[str, torch.Tensor] | None) -> None:
        nonlocal slowest_s
        config = space.config(point, epochs=final_epochs, seed=seed)
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key in evaluated:
            return
        began = time.monotonic()
        model = build_searched_architecture(config, dataset)
        if parent is not None:
            inherit_weights(model, parent)
        epochs = child_epochs if parent is not None else initial_epochs
        short = dataclasses.replace(config.distillation(), epochs=epochs)
        distill(model, teacher_logits, dataset, short)
        accuracy = torch_accuracy(model, dataset.x_val, dataset.y_val)
        sample = dataset.x_val[:1]
        latency = measure(model.eval(), sample)
        macs, params = count_macs_and_params(model, torch.from_numpy(sample))
        candidate = SearchCandidate(
            config=config,
            accuracy=accuracy,
            latency_ms=latency,
            macs=macs,
            params=params,
            inherited=parent is not None,
        )
        evaluated[key] = (candidate, copy.deepcopy(model.state_dict()), point)
        slowest_s = max(slowest_s, time.monotonic() - began)
        report(
            f"candidate {len(evaluated)}: {config.spec(in_channels=1, num_classes=2).label()}: "
            f"accuracy {accuracy:.4f}, p50 {latency:.3f} ms, {macs:,} MACs"
        )

    # 1. Random initial population.
    for _ in range(population):
        if not budget_left():
            break
        evaluate(space.sample(rng), None)

    # 2. Mutate members of the Pareto front, inheriting their weights.
    attempts = 0
    while evaluated and budget_left() and attempts < 1000:
        attempts += 1
        front = pareto_front([entry[0] for entry in evaluated.values()])
        parent = rng.choice(front)
        _, weights, point = next(entry for entry in evaluated.values() if entry[0] is parent)
        evaluate(space.mutate(point, rng), weights)

    candidates = tuple(entry[0] for entry in evaluated.values())
    elapsed = time.monotonic() - started
    front = tuple(pareto_front(candidates))
    logger.info(
        "architecture search: %d candidates in %.0f s, %d on the Pareto front",
        len(candidates),
        elapsed,
        len(front),
    )
    return SearchResult(candidates=candidates, front=front, elapsed_s=elapsed, threads=threads)


def pareto_front(candidates: Sequence[SearchCandidate]) -> list[SearchCandidate]:
    """Return the candidates no other one beats on both accuracy and latency, fastest first."""
    ordered = sorted(candidates, key=lambda c: (c.latency_ms, -c.accuracy))
    front: list[SearchCandidate] = []
    best_accuracy = -1.0
    for candidate in ordered:
        if candidate.accuracy > best_accuracy:
            front.append(candidate)
            best_accuracy = candidate.accuracy
    return front


def inherit_weights(child: nn.Module, parent: dict[str, torch.Tensor]) -> int:
    """Copy ``parent`` tensors into ``child`` where names match; return how many were copied.

    Each tensor copies the overlap of the two shapes: leading channels on every dimension
    except the last two of 4-D convolution weights, where the smaller kernel is centred in
    the larger one. Tensors of blocks the parent lacks keep their initialisation.
    """
    copied = 0
    state = child.state_dict()
    with torch.no_grad():
        for name, target in state.items():
            source = parent.get(name)
            if source is None or source.dim() != target.dim():
                continue
            if source.dim() == 0:
                target.copy_(source)
                copied += 1
                continue
            target_index, source_index = [], []
            for axis, (t_size, s_size) in enumerate(zip(target.shape, source.shape, strict=True)):
                size = min(t_size, s_size)
                if source.dim() == 4 and axis >= 2:
                    target_index.append(slice((t_size - size) // 2, (t_size - size) // 2 + size))
                    source_index.append(slice((s_size - size) // 2, (s_size - size) // 2 + size))
                else:
                    target_index.append(slice(0, size))
                    source_index.append(slice(0, size))
            target[tuple(target_index)] = source[tuple(source_index)]
            copied += 1
    return copied


def _onnx_latency(threads: int, runs: int) -> Callable[[nn.Module, np.ndarray], float]:
    def measure(model: nn.Module, sample: np.ndarray) -> float:
        with tempfile.TemporaryDirectory(prefix="edgefleet-search-") as scratch:
            path = export_onnx(model, sample, Path(scratch) / "candidate.onnx")
            return measure_latency(path, threads=threads, runs=runs, warmup=5).p50_ms

    return measure
