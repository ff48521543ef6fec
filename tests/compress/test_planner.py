from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx
import pytest
from compress_helpers import make_profile
from onnx import version_converter

from edgefleet.compress import (
    ArtifactCache,
    DynamicQuantizationConfig,
    Recipe,
    SourceFormat,
    StaticQuantizationConfig,
    StructuredPruningConfig,
    apply_recipe,
    build_ladder,
    choose_variant,
    default_recipes,
    export_onnx,
    measure_latency,
    plan,
    recipe_grid,
    tighter_recipes,
    train_digits_cnn,
)
from edgefleet.compress.configs import Stage, TechniqueConfig, register_config
from edgefleet.compress.handlers import register_handler
from edgefleet.compress.planner import DEFAULT_PRUNING_RATIOS, MAX_SEARCHED_CANDIDATES
from edgefleet.compress.search import SearchedArchitectureConfig
from edgefleet.compress.variants import measure_variant
from edgefleet.profiles import load_profile

QUICK_RECIPES = [
    Recipe([StaticQuantizationConfig()]),
    Recipe([StructuredPruningConfig(ratio=0.5, finetune_epochs=1)]),
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("plan-cache")


def test_plan_chooses_most_accurate_within_budget(small_cnn, small_digits, tmp_path, cache_dir):
    profile = make_profile()
    report = plan(
        small_cnn,
        small_digits,
        profile,
        out_dir=tmp_path,
        recipes=QUICK_RECIPES,
        cache_dir=cache_dir,
        latency_runs=50,
    )

    chosen = report.variant(report.chosen)
    assert chosen.meets_budget
    assert chosen.latency_p95_ms <= profile.latency_budget_ms
    assert chosen.peak_memory_mb <= profile.model_memory_budget_mb
    fitting = [v for v in (report.baseline, *report.variants) if v.variant_id in report.ladder]
    assert chosen.accuracy == max(v.accuracy for v in fitting if v.meets_budget)
    assert (tmp_path / f"{report.chosen}.onnx").is_file()
    data = report.to_dict()
    assert set(data) >= {"profile", "latency_scale", "baseline", "variants", "chosen", "ladder"}
    assert data["chosen"] == report.chosen


def test_plan_reports_no_fit_with_best_miss(small_cnn, small_digits, tmp_path, cache_dir):
    profile = make_profile(latency_budget_ms=0.0001, model_memory_budget_mb=1)
    report = plan(
        small_cnn,
        small_digits,
        profile,
        out_dir=tmp_path,
        recipes=QUICK_RECIPES,
        cache_dir=cache_dir,
        latency_runs=20,
    )

    assert report.chosen is None
    assert "no variant meets the budget of test-host" in report.reason
    assert "ms over" in report.reason
    assert "MB over" in report.reason
    assert not any(v.meets_budget for v in (report.baseline, *report.variants))


def test_second_plan_reuses_cached_artifacts(small_cnn, small_digits, tmp_path, cache_dir):
    lines: list[str] = []
    plan(
        small_cnn,
        small_digits,
        make_profile(inference_threads=2),
        out_dir=tmp_path,
        recipes=QUICK_RECIPES,
        cache_dir=cache_dir,
        progress=lines.append,
        latency_runs=20,
    )
    plan(
        small_cnn,
        small_digits,
        make_profile(),
        out_dir=tmp_path,
        recipes=QUICK_RECIPES,
        cache_dir=cache_dir,
        progress=lines.append,
        latency_runs=20,
    )
    assert not [line for line in lines if "applying" in line or "epoch" in line]
    assert any("reusing cached artifact" in line for line in lines)


def test_plan_scales_latency(small_cnn, small_digits, tmp_path, cache_dir):
    report = plan(
        small_cnn,
        small_digits,
        make_profile(),
        out_dir=tmp_path,
        recipes=[],
        cache_dir=cache_dir,
        latency_scale=3.0,
        latency_runs=20,
    )
    baseline = report.baseline
    assert baseline.latency_p95_ms == pytest.approx(3.0 * baseline.host_latency_p95_ms)


def test_ladder_drops_variant_slower_than_fp32(small_digits, tmp_path):
    # Honest construction: the "baseline" is a narrow net trained for one epoch and the
    # "variant" a wide net trained longer, so the variant measures more accurate and slower.
    narrow = train_digits_cnn(small_digits, epochs=1, seed=0, widths=(4, 4, 4))
    wide = train_digits_cnn(small_digits, epochs=4, seed=0, widths=(64, 128, 128))
    profile = make_profile()
    cache = ArtifactCache(tmp_path / "cache")

    def measured(model):
        artifact = apply_recipe(model, Recipe(), small_digits, cache=cache)
        return measure_variant(
            artifact,
            dataset=small_digits,
            profile=profile,
            out_dir=tmp_path,
            latency_scale=1.0,
            latency_runs=100,
        )

    baseline, slower = measured(narrow), measured(wide)
    assert slower.accuracy > baseline.accuracy
    assert slower.latency_p95_ms > baseline.latency_p95_ms
    assert slower.meets_budget

    ladder = build_ladder(baseline, [slower], profile)
    chosen, _reason = choose_variant(baseline, [slower], ladder, profile)

    assert ladder == (baseline.variant_id,)
    assert chosen == baseline.variant_id


def test_onnx_model_gets_only_quantization(small_cnn, small_digits, tmp_path):
    path = export_onnx(small_cnn, small_digits.x_val, tmp_path / "source.onnx")
    report = plan(
        path,
        small_digits,
        make_profile(),
        out_dir=tmp_path / "out",
        recipes=QUICK_RECIPES,
        latency_runs=20,
    )
    assert report.source_format is SourceFormat.ONNX
    assert [variant.recipe for variant in report.variants] == [QUICK_RECIPES[0]]
    assert any("only ONNX-stage recipes" in note for note in report.notes)
    assert any(note.startswith("skipped prune 50%") for note in report.notes)
    assert tighter_recipes(report) == []


def test_tighter_recipes_prune_beyond_largest_ratio(small_cnn, small_digits, tmp_path, cache_dir):
    report = plan(
        small_cnn,
        small_digits,
        make_profile(),
        out_dir=tmp_path,
        recipes=QUICK_RECIPES,
        cache_dir=cache_dir,
        latency_runs=20,
    )
    tighter = tighter_recipes(report)
    assert tighter
    for recipe in tighter:
        assert recipe.torch_steps[0].ratio > 0.5
        assert isinstance(recipe[-1], StaticQuantizationConfig)


# Plans four profiles with every default recipe, several minutes on a busy 2-core host.
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_digits_plan_meets_every_shipped_profile(digits_cnn, digits, tmp_path):
    from compress_helpers import PROFILES_DIR

    cache_dir = tmp_path / "cache"
    for profile_path in sorted(PROFILES_DIR.glob("*.toml")):
        profile = load_profile(profile_path)
        report = plan(
            digits_cnn,
            digits,
            profile,
            out_dir=tmp_path / profile.name,
            cache_dir=cache_dir,
        )
        assert report.chosen is not None, report.reason
        chosen = report.variant(report.chosen)
        assert chosen.meets_budget
        assert chosen.latency_p95_ms <= report.baseline.latency_p95_ms


def test_default_recipes_follow_profile_cpu_flags():
    no_vnni = default_recipes(SourceFormat.ONNX, make_profile(cpu_flags=["avx2"]))
    vnni = default_recipes(SourceFormat.ONNX, make_profile(cpu_flags=["avx2", "avx512_vnni"]))

    assert no_vnni[0][0].reduce_range is True
    assert vnni[0][0].reduce_range is False
    assert no_vnni[0].to_json() != vnni[0].to_json()


def test_default_recipes_offer_dynamic_only_without_convolutions():
    conv = default_recipes(SourceFormat.TORCH, make_profile(), conv_heavy=True)
    linear = default_recipes(SourceFormat.TORCH, make_profile(), conv_heavy=False)

    def dynamic(recipes):
        return [r for r in recipes if any(isinstance(s, DynamicQuantizationConfig) for s in r)]

    assert not dynamic(conv)
    assert len(dynamic(linear)) == 1 + len(DEFAULT_PRUNING_RATIOS)


def test_default_recipes_include_searched_candidates():
    searched = SearchedArchitectureConfig(widths=(16, 16, 24), depths=(1, 1, 1), epochs=2)
    profile = make_profile()
    recipes = default_recipes(SourceFormat.TORCH, profile, searched=[searched])

    assert Recipe([searched]) in recipes
    searched_int8 = [r for r in recipes if r[0] == searched and len(r) == 2]
    assert len(searched_int8) == 1
    assert isinstance(searched_int8[0][1], StaticQuantizationConfig)


@pytest.mark.slow
def test_plan_with_search_measures_searched_variants(small_cnn, small_digits, tmp_path):
    report = plan(
        small_cnn,
        small_digits,
        make_profile(latency_budget_ms=50.0),
        out_dir=tmp_path,
        recipes=[],
        latency_runs=20,
        search_seconds=1.0,
    )

    searched = [v for v in report.variants if isinstance(v.recipe[0], SearchedArchitectureConfig)]
    assert searched, report.notes
    assert len(searched) <= 2 * MAX_SEARCHED_CANDIDATES
    assert any(len(v.recipe) == 2 for v in searched)
    assert report.chosen is not None, report.reason


def test_recipe_grid_combines_every_candidate():
    prune = StructuredPruningConfig(ratio=0.5)
    int8, dynamic = StaticQuantizationConfig(), DynamicQuantizationConfig()
    grid = recipe_grid([[], [prune]], [[], [int8], [dynamic]])

    assert Recipe() not in grid
    assert len(grid) == 5
    assert Recipe([prune, dynamic]) in grid


def test_cache_key_includes_profile_quantization_settings(small_cnn, small_digits, tmp_path):
    cache = ArtifactCache(tmp_path)
    settings = [
        default_recipes(SourceFormat.ONNX, make_profile(cpu_flags=flags))[0]
        for flags in (["avx2"], ["avx2", "avx512_vnni"])
    ]
    artifacts = [apply_recipe(small_cnn, recipe, small_digits, cache=cache) for recipe in settings]

    # 7-bit and 8-bit weights are different files, each in its own cache entry.
    assert artifacts[0].sha256 != artifacts[1].sha256
    assert artifacts[0].path.parent != artifacts[1].path.parent


def test_plan_skips_dynamic_for_conv_model(small_cnn, small_digits, tmp_path, cache_dir):
    steps: list[tuple[int, int, str]] = []
    recipes = [
        Recipe([DynamicQuantizationConfig(include_conv=True)]),
        Recipe([StaticQuantizationConfig()]),
    ]
    report = plan(
        small_cnn,
        small_digits,
        make_profile(),
        out_dir=tmp_path,
        recipes=recipes,
        cache_dir=cache_dir,
        latency_runs=20,
        on_step=lambda done, total, label: steps.append((done, total, label)),
    )

    assert [variant.recipe for variant in report.variants] == [recipes[1]]
    assert any("skipped int8 dynamic" in note and "convolutions" in note for note in report.notes)
    assert steps[-1][0] == steps[-1][1] == 2


def test_dynamic_conv_is_slower_than_fp32(digits_cnn, digits, tmp_path):
    # The trap the planner avoids: ConvInteger is far slower than float32 Conv on CPU.
    cache = ArtifactCache(tmp_path)
    fp32 = apply_recipe(digits_cnn, Recipe(), digits, cache=cache)
    dynamic = apply_recipe(
        digits_cnn, Recipe([DynamicQuantizationConfig(include_conv=True)]), digits, cache=cache
    )
    fp32_ms = measure_latency(fp32.path, threads=1, runs=200).p50_ms
    dynamic_ms = measure_latency(dynamic.path, threads=1, runs=200).p50_ms
    assert dynamic_ms > 1.5 * fp32_ms


def test_plan_reports_predictor_errors(small_cnn, small_digits, tmp_path, cache_dir):
    report = plan(
        small_cnn,
        small_digits,
        make_profile(),
        out_dir=tmp_path,
        recipes=[*QUICK_RECIPES, Recipe([StaticQuantizationConfig(calibration="entropy")])],
        cache_dir=cache_dir,
        latency_runs=20,
    )

    predictor = report.to_dict()["predictor"]
    unique_ids = {v.variant_id for v in (report.baseline, *report.variants)}
    assert {row["variant_id"] for row in predictor["variants"]} == unique_ids
    assert 0.0 <= predictor["latency_p50_within_10pct"] <= 1.0
    for row in predictor["variants"]:
        assert row["predicted_peak_memory_mb"] >= 0


@register_config
@dataclasses.dataclass(frozen=True)
class _UnloadableOpsetConfig(TechniqueConfig):
    """An ONNX-stage step that stamps the graph with an opset no onnxruntime implements."""

    TYPE: ClassVar[str] = "test_unloadable_opset"
    VERSION: ClassVar[int] = 1
    STAGE: ClassVar[Stage] = Stage.ONNX

    def describe(self) -> str:
        return "stamp opset 99"


@register_handler(_UnloadableOpsetConfig)
def _stamp_unloadable_opset(config, source, destination, context):
    model = onnx.load(str(source))
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 99
    onnx.save(model, str(destination))
    return destination


def test_plan_quantizes_model_above_host_opset(small_cnn, small_digits, tmp_path):
    exported = export_onnx(small_cnn, small_digits.x_val, tmp_path / "opset18.onnx")
    newest = onnx.defs.onnx_opset_version()
    source = tmp_path / f"opset{newest}.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(exported)), newest), str(source))
    int8 = Recipe([StaticQuantizationConfig()])

    report = plan(
        source,
        small_digits,
        make_profile(),
        out_dir=tmp_path / "out",
        recipes=[int8],
        latency_runs=20,
    )

    assert [variant.recipe for variant in report.variants] == [int8]
    assert report.variants[0].opset < newest
    assert not any(note.startswith("rejected") for note in report.notes)


def test_plan_rejects_recipe_that_raises(small_cnn, small_digits, tmp_path):
    source = export_onnx(small_cnn, small_digits.x_val, tmp_path / "source.onnx")
    broken = Recipe([_UnloadableOpsetConfig()])
    int8 = Recipe([StaticQuantizationConfig()])

    report = plan(
        source,
        small_digits,
        make_profile(),
        out_dir=tmp_path / "out",
        recipes=[broken, int8],
        latency_runs=20,
    )

    assert [variant.recipe for variant in report.variants] == [int8]
    rejected = [note for note in report.notes if note.startswith(f"rejected {broken.name}")]
    assert len(rejected) == 1
    assert "onnxruntime cannot load" in rejected[0]
    assert "\n" not in rejected[0]
    assert report.baseline.variant_id in report.ladder
