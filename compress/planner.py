"""The budget-driven planner: compress a model with candidate recipes for one profile,
measure every variant, and pick the most accurate one that fits the budget.

Artifacts are cached by (model digest, dataset digest, recipe), so planning the same
model for a second profile retrains nothing. Only latency and memory are measured again,
at the new profile's thread count.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgefleet.compress.cache import ArtifactCache
from edgefleet.compress.configs import (
    DynamicQuantizationConfig,
    Recipe,
    StaticQuantizationConfig,
    StructuredPruningConfig,
    TechniqueConfig,
)
from edgefleet.compress.dataset import SUPPORTED_MODELS, Dataset
from edgefleet.compress.errors import CompressError, DatasetError, MeasurementError, ModelLoadError
from edgefleet.compress.export import ONNX_OPSET
from edgefleet.compress.latency_model import (
    GraphFeatures,
    LatencyModel,
    MemoryModel,
    graph_features,
    leave_one_out,
)
from edgefleet.compress.pipeline import apply_recipe
from edgefleet.compress.quantization import dynamic_quantization_for, static_quantization_for
from edgefleet.compress.runtime import create_session, run_batched
from edgefleet.compress.search import search_architectures
from edgefleet.compress.variants import VariantReport, measure_variant
from edgefleet.errors import EdgefleetError
from edgefleet.profiles import DeviceProfile

__all__ = [
    "DEFAULT_PRUNING_RATIOS",
    "PlanReport",
    "SourceFormat",
    "build_ladder",
    "choose_variant",
    "default_recipes",
    "plan",
    "recipe_grid",
    "tighter_recipes",
]

logger = logging.getLogger(__name__)

DEFAULT_PRUNING_RATIOS = (0.25, 0.5, 0.7)
# Searched architectures a plan with search_seconds adds to its recipes, each compressed
# alone and with int8.
MAX_SEARCHED_CANDIDATES = 3
# tighter_recipes never proposes pruning more than this fraction of channels.
MAX_PRUNING_RATIO = 0.95
# A model with at least this share of its MACs in convolutions gets no dynamic int8
# recipe: onnxruntime runs ConvInteger several times slower than float32 Conv on CPU
# (4x on the digits CNN at one thread with onnxruntime 1.32 on an AVX-512 x86 host).
CONV_HEAVY_FRACTION = 0.5


class SourceFormat(StrEnum):
    """Form of the model handed to the planner."""

    TORCH = "torch"
    ONNX = "onnx"


@dataclasses.dataclass(frozen=True, eq=False)
class PlanReport:
    """Every variant measured for one profile, the ladder and the chosen variant."""

    profile: DeviceProfile
    latency_scale: float
    baseline: VariantReport
    variants: tuple[VariantReport, ...]
    chosen: str | None
    ladder: tuple[str, ...]
    reason: str
    source_format: SourceFormat = SourceFormat.TORCH
    notes: tuple[str, ...] = ()
    # Fit of the latency and memory models on this plan's variants, with leave-one-out
    # errors; see ``_model_summary``. Empty when fewer than three variants were measured.
    predictor: dict[str, Any] = dataclasses.field(default_factory=dict)

    def variant(self, variant_id: str) -> VariantReport:
        """Return the baseline or variant with ``variant_id``; raises ``KeyError``."""
        for report in (self.baseline, *self.variants):
            if report.variant_id == variant_id:
                return report
        raise KeyError(variant_id)

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-safe values (self-test arrays excluded)."""
        return {
            "profile": self.profile.to_dict(),
            "latency_scale": self.latency_scale,
            "source_format": self.source_format.value,
            "baseline": self.baseline.to_dict(),
            "variants": [variant.to_dict() for variant in self.variants],
            "chosen": self.chosen,
            "ladder": list(self.ladder),
            "reason": self.reason,
            "notes": list(self.notes),
            "predictor": self.predictor,
        }


def default_recipes(
    source_format: SourceFormat = SourceFormat.TORCH,
    profile: DeviceProfile | None = None,
    *,
    conv_heavy: bool = True,
    searched: Sequence[TechniqueConfig] = (),
) -> list[Recipe]:
    """Return the candidate recipes ``plan`` tries when none are given.

    Torch models get channel pruning at each of ``DEFAULT_PRUNING_RATIOS`` (fine-tuned with
    distillation), each ``searched`` architecture config, static int8, and each pruning
    ratio or searched architecture followed by int8. ONNX models get static int8 only.
    With a ``profile``, static and dynamic int8 use the settings that
    ``static_quantization_for`` and ``dynamic_quantization_for`` derive from its CPU
    flags. Models that are not ``conv_heavy`` also get dynamic int8 of their MatMul and
    Gemm nodes.
    """
    int8 = static_quantization_for(profile) if profile is not None else StaticQuantizationConfig()
    quantizers: list[TechniqueConfig] = [int8]
    if not conv_heavy:
        quantizers.append(
            dynamic_quantization_for(profile)
            if profile is not None
            else DynamicQuantizationConfig()
        )
    if source_format is SourceFormat.ONNX:
        return [Recipe([step]) for step in quantizers]
    pruned = [StructuredPruningConfig(ratio=ratio) for ratio in DEFAULT_PRUNING_RATIOS]
    torch_candidates = [[], *([step] for step in pruned), *([step] for step in searched)]
    return recipe_grid(torch_candidates, [[], *([step] for step in quantizers)])


def recipe_grid(
    torch_candidates: Sequence[Sequence[TechniqueConfig]],
    onnx_candidates: Sequence[Sequence[TechniqueConfig]],
) -> list[Recipe]:
    """Return every torch candidate followed by every ONNX candidate, minus the empty recipe.

    Candidates are step lists of any registered configs, so pruning ratios, distillation
    and architecture-search candidates combine with each quantization mode without the
    planner knowing them: ``recipe_grid([[], [prune]], [[], [int8], [dynamic]])``.
    """
    recipes = []
    for torch_steps in torch_candidates:
        for onnx_steps in onnx_candidates:
            recipe = Recipe([*torch_steps, *onnx_steps])
            if recipe:
                recipes.append(recipe)
    return recipes


def plan(
    model: nn.Module | Path,
    dataset: Dataset,
    profile: DeviceProfile,
    *,
    out_dir: Path,
    latency_scale: float = 1.0,
    recipes: Sequence[Recipe] | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    latency_runs: int = 200,
    on_step: Callable[[int, int, str], None] | None = None,
    search_seconds: float | None = None,
) -> PlanReport:
    """Build and measure the fp32 baseline and every recipe's variant for ``profile``.

    ``model`` is a torch module or the path of an ONNX file. Latency is measured on this
    host at ``profile.inference_threads`` and multiplied by ``latency_scale`` (device p50
    over host p50 of a reference model). Variant files go to ``out_dir`` as
    ``<variant_id>.onnx``; the artifact cache defaults to ``out_dir / "cache"``. A recipe
    whose variant fails verification is left out and named in ``notes``, and so is a
    dynamic int8 recipe for a convolutional model (see ``CONV_HEAVY_FRACTION``).

    With ``search_seconds`` and a torch model, architecture search
    (``search_architectures``) runs for about that many seconds at the profile's thread
    count first, and up to ``MAX_SEARCHED_CANDIDATES`` members of its Pareto front join
    the recipes, alone and followed by int8.

    ``progress`` receives one line per step; ``on_step(done, total, label)`` is called
    before each variant and once at the end with ``done == total``, for progress bars.
    """
    if not math.isfinite(latency_scale) or latency_scale <= 0:
        raise ValueError(f"latency_scale must be a positive finite number, got {latency_scale!r}")
    out_dir = Path(out_dir)
    report = progress or (lambda _message: None)
    step = on_step or (lambda _done, _total, _label: None)
    source_format = SourceFormat.TORCH if isinstance(model, nn.Module) else SourceFormat.ONNX
    check_dataset_fits(model, dataset)
    cache = ArtifactCache(cache_dir if cache_dir is not None else out_dir / "cache")

    def measure(
        artifact_recipe: Recipe, reference_outputs: np.ndarray | None = None
    ) -> VariantReport:
        artifact = apply_recipe(model, artifact_recipe, dataset, cache=cache, progress=report)
        variant = measure_variant(
            artifact,
            dataset=dataset,
            profile=profile,
            out_dir=out_dir,
            latency_scale=latency_scale,
            latency_runs=latency_runs,
            reference_outputs=reference_outputs,
        )
        report(
            f"{variant.name}: accuracy {variant.accuracy:.4f}, {variant.size_bytes:,} bytes, "
            f"p95 {variant.latency_p95_ms:.3f} ms, peak memory {variant.peak_memory_mb:.1f} MB"
        )
        return variant

    step(0, 1, "fp32 baseline")
    report("fp32 baseline")
    baseline = _measure_baseline(measure)
    conv_fraction = _conv_fraction(baseline.onnx_path)
    conv_heavy = conv_fraction >= CONV_HEAVY_FRACTION
    searched: list[TechniqueConfig] = []
    if search_seconds is not None and isinstance(model, nn.Module):
        searched = _searched_configs(model, dataset, profile, search_seconds, report)
    if recipes is None:
        recipes = default_recipes(source_format, profile, conv_heavy=conv_heavy, searched=searched)
    else:
        int8 = static_quantization_for(profile)
        recipes = [*recipes, *recipe_grid([[c] for c in searched], [[], [int8]])]
    candidates, notes = _applicable_recipes(recipes, source_format)
    if conv_heavy:
        candidates = _drop_dynamic_quantization(candidates, conv_fraction, notes)

    total = len(candidates) + 1
    variants = []
    for index, recipe in enumerate(candidates, start=2):
        step(index - 1, total, recipe.name)
        report(f"[{index}/{total}] {recipe.name}")
        try:
            variants.append(measure(recipe, baseline.outputs_val))
        except Exception as exc:  # torch, onnx and onnxruntime raise many types
            # One failed recipe leaves the baseline and the other recipes a ladder.
            reason = _describe_error(exc)
            logger.warning("recipe %s rejected: %s", recipe.name, reason)
            logger.debug("recipe %s failed", recipe.name, exc_info=True)
            notes.append(f"rejected {recipe.name}: {reason}")
            report(f"{recipe.name}: rejected: {reason}")
    step(total, total, "done")

    ladder = build_ladder(baseline, variants, profile)
    chosen, reason = choose_variant(baseline, variants, ladder, profile)
    report(reason)
    return PlanReport(
        profile=profile,
        latency_scale=latency_scale,
        baseline=baseline,
        variants=tuple(variants),
        chosen=chosen,
        ladder=ladder,
        reason=reason,
        source_format=source_format,
        notes=tuple(notes),
        predictor=_model_summary([baseline, *variants], threads=profile.inference_threads),
    )


def _measure_baseline(measure: Callable[[Recipe], VariantReport]) -> VariantReport:
    """Measure the fp32 variant, the one rung that every ladder has.

    Without it no variant exists, so its failure fails the plan. An error from torch, onnx
    or onnxruntime is raised as a ``CompressError`` that names it.
    """
    try:
        return measure(Recipe())
    except EdgefleetError:
        raise
    except Exception as exc:  # torch, onnx and onnxruntime raise many types
        raise CompressError(
            f"the fp32 baseline, the variant every plan needs, failed: {_describe_error(exc)}. "
            "Check that onnxruntime on this host loads and runs the model, or export it "
            f"again at ONNX opset {ONNX_OPSET}, which the profiles' onnxruntime releases implement"
        ) from exc


def _describe_error(exc: BaseException) -> str:
    """Return one line: the message of an edgefleet error, else the type and message."""
    text = " ".join(str(exc).split())
    if isinstance(exc, EdgefleetError):
        return text
    return f"{type(exc).__name__}: {text}"


def _searched_configs(
    model: nn.Module,
    dataset: Dataset,
    profile: DeviceProfile,
    seconds: float,
    report: Callable[[str], None],
) -> list[TechniqueConfig]:
    """Return the configs of the most accurate, the fastest and the median front members."""
    result = search_architectures(
        model,
        dataset,
        threads=profile.inference_threads,
        time_limit_s=seconds,
        progress=report,
    )
    front = sorted(result.front, key=lambda candidate: candidate.latency_ms)
    picks = {0, len(front) // 2, max(range(len(front)), key=lambda i: front[i].accuracy)}
    chosen = [front[index].config for index in sorted(picks)][:MAX_SEARCHED_CANDIDATES]
    report(
        f"architecture search: {len(result.candidates)} candidates in "
        f"{result.elapsed_s:.0f} s, {len(front)} on the Pareto front, {len(chosen)} planned"
    )
    return chosen


def _conv_fraction(path: Path) -> float:
    try:
        return graph_features(path).conv_fraction
    except MeasurementError as exc:
        # Without shapes the model counts as convolutional, which only withholds dynamic
        # int8, the one technique that can make a convolutional model slower.
        logger.warning("cannot count MACs of %s, treating it as convolutional: %s", path, exc)
        return 1.0


def _drop_dynamic_quantization(
    candidates: list[Recipe], conv_fraction: float, notes: list[str]
) -> list[Recipe]:
    kept = []
    for recipe in candidates:
        if any(isinstance(step, DynamicQuantizationConfig) for step in recipe):
            notes.append(
                f"skipped {recipe.name}: {conv_fraction:.0%} of the model's MACs are in "
                "convolutions, and dynamic int8 runs them several times slower than float32 "
                "on CPU; static int8 is the quantization for convolutional models"
            )
            continue
        kept.append(recipe)
    return kept


def _model_summary(reports: Sequence[VariantReport], *, threads: int) -> dict[str, Any]:
    """Fit the latency and memory models on ``reports`` and return leave-one-out errors.

    The error of a variant is its prediction from a fit on the other variants divided by
    its measurement, minus one. Returns an empty dict for fewer than three variants.
    """
    unique = list({report.variant_id: report for report in reports}.values())
    features: list[GraphFeatures] = []
    measured: list[VariantReport] = []
    for report in unique:
        try:
            features.append(graph_features(report.onnx_path))
        except MeasurementError as exc:
            logger.warning("latency model skips %s: %s", report.variant_id, exc)
            continue
        measured.append(report)
    if len(measured) < 3:
        return {}

    # NOTE: p95 on a shared host is dominated by preemption, not by the graph. On the
    # 2-core development host under load, leave-one-out put 96% of 24 digits CNN variants
    # within 10% for p50 but only 25% for p95, so both errors are reported.
    latency = [report.host_latency_p95_ms for report in measured]
    median = [report.host_latency_p50_ms for report in measured]
    memory = [max(report.peak_memory_mb, 1e-3) for report in measured]
    latency_errors = leave_one_out(features, latency)
    median_errors = leave_one_out(features, median)
    memory_errors = leave_one_out(features, memory, memory=True)
    latency_model = LatencyModel.fit(features, latency, threads=threads)
    memory_model = MemoryModel.fit(features, memory)
    return {
        "threads": threads,
        "latency_within_10pct": float(np.mean(np.abs(latency_errors) <= 0.1)),
        "latency_p50_within_10pct": float(np.mean(np.abs(median_errors) <= 0.1)),
        "memory_within_10pct": float(np.mean(np.abs(memory_errors) <= 0.1)),
        "variants": [
            {
                "variant_id": report.variant_id,
                "host_latency_p95_ms": report.host_latency_p95_ms,
                "predicted_host_latency_p95_ms": latency_model.predict(item),
                "latency_loo_error": float(latency_error),
                "peak_memory_mb": report.peak_memory_mb,
                "predicted_peak_memory_mb": memory_model.predict(item),
                "memory_loo_error": float(memory_error),
            }
            for report, item, latency_error, memory_error in zip(
                measured, features, latency_errors, memory_errors, strict=True
            )
        ],
    }


def build_ladder(
    baseline: VariantReport, variants: Sequence[VariantReport], profile: DeviceProfile
) -> tuple[str, ...]:
    """Return variant ids, best first, that a device steps down through.

    Only variants within the memory budget qualify. Variants are ranked by accuracy tier
    (see ``accuracy_tiers``), then by how closely their outputs follow the fp32 baseline
    (``output_error``), and a variant is dropped when a better-ranked one is at least as
    fast (a Pareto front on quality and p95 latency). So among variants that are equally
    accurate within the validation noise, a device gets the most faithful one it can
    afford, and steps down to less faithful, faster ones only under pressure. When the
    fp32 baseline fits in memory, a variant slower than the baseline is dropped too:
    compression that costs latency gains nothing.
    """
    unique = {report.variant_id: report for report in (baseline, *variants)}
    fitting = [
        report
        for report in unique.values()
        if report.peak_memory_mb <= profile.model_memory_budget_mb
    ]
    if baseline in fitting:
        fitting = [r for r in fitting if r.latency_p95_ms <= baseline.latency_p95_ms]
    tiers = accuracy_tiers(list(unique.values()))
    fitting.sort(
        key=lambda report: (
            tiers[report.variant_id],
            report.output_error,
            report.latency_p95_ms,
        )
    )
    ladder: list[str] = []
    fastest_so_far = math.inf
    for report in fitting:
        if report.latency_p95_ms < fastest_so_far:
            ladder.append(report.variant_id)
            fastest_so_far = report.latency_p95_ms
    return tuple(ladder)


def accuracy_tiers(reports: Sequence[VariantReport]) -> dict[str, int]:
    """Group variants whose accuracy differs by less than the validation noise.

    Tier 0 contains the variants within one standard error of the best accuracy, tier 1
    those within two, and so on. The standard error of an accuracy ``p`` measured on
    ``n`` samples is ``sqrt(p (1 - p) / n)``, floored at one sample (``1 / n``): on 360
    digits at 99%, 0.5 points. A variant that is one sample more accurate than fp32 is
    noise, not an improvement, so it does not outrank the more faithful fp32 model.
    """
    if not reports:
        return {}
    outputs = reports[0].outputs_val
    samples = max(len(outputs) if outputs is not None else 0, 1)
    best = max(report.accuracy for report in reports)
    standard_error = max(math.sqrt(best * (1.0 - best) / samples), 1.0 / samples)
    # The small epsilon keeps a difference of exactly one standard error in the upper tier
    # despite floating-point rounding.
    return {
        report.variant_id: math.floor((best - report.accuracy) / standard_error + 1e-9)
        for report in reports
    }


def choose_variant(
    baseline: VariantReport,
    variants: Sequence[VariantReport],
    ladder: Sequence[str],
    profile: DeviceProfile,
) -> tuple[str | None, str]:
    """Return ``(variant_id, reason)`` for the most accurate ladder entry within budget.

    When nothing fits, the id is None and the reason names the variant closest to the
    budget and by how much it misses.
    """
    reports = {report.variant_id: report for report in (baseline, *variants)}
    budget = (
        f"p95 <= {profile.latency_budget_ms:g} ms, memory <= {profile.model_memory_budget_mb} MB"
    )
    for variant_id in ladder:
        chosen = reports[variant_id]
        if chosen.meets_budget:
            return variant_id, (
                f"chose {chosen.name} ({variant_id}) for {profile.name} ({budget}): accuracy "
                f"{chosen.accuracy:.4f} (fp32 {baseline.accuracy:.4f}), p95 "
                f"{chosen.latency_p95_ms:.3f} ms, peak memory {chosen.peak_memory_mb:.1f} MB"
            )

    closest = min(reports.values(), key=lambda report: _budget_overshoot(report, profile))
    misses = []
    if closest.latency_p95_ms > profile.latency_budget_ms:
        misses.append(
            f"p95 {closest.latency_p95_ms:.3f} ms is "
            f"{closest.latency_p95_ms - profile.latency_budget_ms:.3f} ms over"
        )
    if closest.peak_memory_mb > profile.model_memory_budget_mb:
        misses.append(
            f"peak memory {closest.peak_memory_mb:.1f} MB is "
            f"{closest.peak_memory_mb - profile.model_memory_budget_mb:.1f} MB over"
        )
    if not misses:
        misses.append("it fits, but is slower than the fp32 baseline, which does not fit")
    return None, (
        f"no variant meets the budget of {profile.name} ({budget}); the closest, "
        f"{closest.name} ({closest.variant_id}), misses it: {'; '.join(misses)}. "
        "A smaller model, stronger pruning or a larger budget is needed"
    )


def tighter_recipes(report: PlanReport) -> list[Recipe]:
    """Return more aggressive recipes than any in ``report``, for recompression.

    For torch models: two pruning ratios beyond the largest one tried (halfway and three
    quarters of the way to removing every channel, capped at ``MAX_PRUNING_RATIO``), with
    two more fine-tuning epochs, each followed by int8. For ONNX models only static int8
    exists, so the list is empty once int8 has been tried.
    """
    tried = {variant.recipe.to_json() for variant in (report.baseline, *report.variants)}
    int8 = static_quantization_for(report.profile)
    if report.source_format is SourceFormat.ONNX:
        quantized = any(
            isinstance(step, StaticQuantizationConfig)
            for variant in report.variants
            for step in variant.recipe
        )
        return [] if quantized else [Recipe([int8])]

    pruning_steps = [
        step
        for variant in report.variants
        for step in variant.recipe
        if isinstance(step, StructuredPruningConfig)
    ]
    largest = max((step.ratio for step in pruning_steps), default=0.0)
    epochs = max((step.finetune_epochs for step in pruning_steps), default=3) + 2
    candidates = []
    for fraction in (0.5, 0.75):
        ratio = round(min(largest + fraction * (1.0 - largest), MAX_PRUNING_RATIO), 3)
        if ratio <= largest:
            continue
        step = StructuredPruningConfig(ratio=ratio, finetune_epochs=epochs)
        candidates.append(Recipe([step, int8]))
    return [recipe for recipe in candidates if recipe.to_json() not in tried]


def check_dataset_fits(model: nn.Module | Path, dataset: Dataset) -> None:
    """Raise ``DatasetError`` unless ``model`` maps dataset samples to class logits.

    An ONNX model's inputs are checked first against ``SUPPORTED_MODELS``, so a model
    edgefleet cannot serve is named as such rather than by onnxruntime's error.
    """
    samples = dataset.x_val[:2]
    try:
        if isinstance(model, nn.Module):
            with torch.no_grad():
                logits = model.eval()(torch.from_numpy(samples)).numpy()
        else:
            session = create_session(model, threads=1)
            _check_onnx_inputs(session, dataset)
            logits = run_batched(session, samples)
    except (ModelLoadError, DatasetError):
        raise
    except Exception as exc:  # torch and onnxruntime report shape mismatches many ways
        raise DatasetError(
            f"the model rejects dataset samples of shape {dataset.sample_shape} "
            f"({SUPPORTED_MODELS}): {type(exc).__name__}: {exc}"
        ) from exc
    if logits.ndim != 2:
        raise DatasetError(
            f"the model outputs shape {logits.shape} for 2 samples; a classifier must "
            f"output (samples, classes), because {SUPPORTED_MODELS}"
        )
    if logits.shape[1] < dataset.num_classes:
        raise DatasetError(
            f"the dataset has labels up to {dataset.num_classes - 1} but the model outputs "
            f"{logits.shape[1]} classes"
        )
    if not np.isfinite(logits).all():
        raise DatasetError("the model outputs NaN or infinite values on dataset samples")


def _check_onnx_inputs(session: Any, dataset: Dataset) -> None:
    """Raise ``DatasetError`` when the inputs of ``session`` break ``SUPPORTED_MODELS``."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(graph_input.name for graph_input in inputs)
        raise DatasetError(
            f"the model has {len(inputs)} inputs ({names}), but {SUPPORTED_MODELS}; export "
            "a model that takes one tensor"
        )
    graph_input = inputs[0]
    if graph_input.type != "tensor(float)":
        element = graph_input.type.removeprefix("tensor(").removesuffix(")")
        raise DatasetError(
            f"the model's input {graph_input.name!r} has element type {element}, but "
            f"{SUPPORTED_MODELS}; export the model with a float32 input"
        )
    if _matches_sample_shape(graph_input.shape, dataset.sample_shape):
        batched = ", ".join(["N", *map(str, dataset.sample_shape)])
        raise DatasetError(
            f"the model's input {graph_input.name!r} has shape {list(graph_input.shape)}, "
            f"without a batch dimension, but {SUPPORTED_MODELS}; export it to take batches "
            f"of shape ({batched}), for example with torch.onnx.export, an example input "
            f"with a leading dimension of 1 and dynamic_axes={{{graph_input.name!r}: {{0: 'N'}}}}"
        )


def _matches_sample_shape(shape: Sequence[int | str | None], sample_shape: tuple[int, ...]) -> bool:
    """Return True when ``shape`` is one sample's shape, so it lacks a batch dimension."""
    if len(shape) != len(sample_shape):
        return False
    return all(
        not isinstance(dim, int) or dim == size
        for dim, size in zip(shape, sample_shape, strict=True)
    )


def _applicable_recipes(
    recipes: Sequence[Recipe], source_format: SourceFormat
) -> tuple[list[Recipe], list[str]]:
    candidates, notes, seen = [], [], {Recipe().to_json()}
    if source_format is SourceFormat.ONNX:
        notes.append(
            "the model is an ONNX file, so only ONNX-stage recipes (static quantization) "
            "apply; pass a torch factory to also prune"
        )
    for recipe in map(Recipe, recipes):
        if source_format is SourceFormat.ONNX and recipe.torch_steps:
            notes.append(f"skipped {recipe.name}: it needs a torch model")
            continue
        if recipe.to_json() not in seen:
            seen.add(recipe.to_json())
            candidates.append(recipe)
    return candidates, notes


def _budget_overshoot(report: VariantReport, profile: DeviceProfile) -> float:
    return max(
        report.latency_p95_ms / profile.latency_budget_ms,
        report.peak_memory_mb / profile.model_memory_budget_mb,
    )
