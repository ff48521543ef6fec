from __future__ import annotations

import pytest
import torch

from edgefleet.compress import ConfigError, Recipe, config_from_dict
from edgefleet.compress.cache import ArtifactCache
from edgefleet.compress.mobilenet import MobileNetV2Family, mobilenet_v2_spec
from edgefleet.compress.pipeline import apply_recipe
from edgefleet.compress.pruning import count_macs_and_params
from edgefleet.compress.search import (
    SearchCandidate,
    SearchedArchitectureConfig,
    SearchSpace,
    inherit_weights,
    pareto_front,
    search_architectures,
)

TINY_SPACE = SearchSpace(
    resolutions=(8,),
    widths=((8, 12), (12, 16)),
    depths=(1, 2),
    kernels=(3,),
    expansions=(2, 3),
    strides=(1, 2),
    stem_width=8,
    head_width=32,
)


def test_mobilenet_v2_spec_matches_published_size():
    model = MobileNetV2Family(mobilenet_v2_spec()).eval()
    macs, params = count_macs_and_params(model, torch.zeros(1, 3, 224, 224))
    assert 3.4e6 < params < 3.6e6  # 3.5 M weights in the MobileNetV2 paper
    assert 0.29e9 < macs < 0.33e9  # about 300 M multiply-adds


def test_searched_config_round_trips_json():
    config = SearchedArchitectureConfig(
        widths=(8, 16), depths=(1, 2), kernels=(3, 5), expansions=(2, 4), strides=(1, 2), epochs=2
    )
    assert Recipe.from_json(Recipe([config]).to_json()) == Recipe([config])
    assert config_from_dict(config.to_dict()).widths == (8, 16)


def test_searched_config_rejects_mismatched_stages():
    with pytest.raises(ConfigError, match="one length"):
        SearchedArchitectureConfig(
            widths=(8,), depths=(1, 2), kernels=(3, 3), expansions=(2, 2), strides=(1, 2)
        )
    with pytest.raises(ConfigError, match="kernel"):
        SearchedArchitectureConfig(kernels=(3, 4, 3))


def test_inherit_weights_copies_overlap():
    small = SearchedArchitectureConfig(
        widths=(8, 8), depths=(1, 1), kernels=(3, 3), expansions=(2, 2), strides=(1, 2)
    )
    large = SearchedArchitectureConfig(
        widths=(12, 8), depths=(2, 1), kernels=(5, 3), expansions=(2, 2), strides=(1, 2)
    )
    parent = MobileNetV2Family(small.spec(in_channels=1, num_classes=4))
    child = MobileNetV2Family(large.spec(in_channels=1, num_classes=4))
    copied = inherit_weights(child, parent.state_dict())
    assert copied > 10
    assert torch.equal(child.stem[0].weight, parent.stem[0].weight)
    depthwise_parent = parent.stages[0][0].block[3].weight  # 3x3 kernel
    depthwise_child = child.stages[0][0].block[3].weight  # 5x5 kernel, centred copy
    assert torch.equal(depthwise_child[:, :, 1:4, 1:4], depthwise_parent)


def test_pareto_front_drops_dominated():
    config = SearchedArchitectureConfig()

    def candidate(accuracy: float, latency: float) -> SearchCandidate:
        return SearchCandidate(config, accuracy, latency, macs=1, params=1, inherited=False)

    fast, slow_better, dominated = candidate(0.9, 1.0), candidate(0.95, 2.0), candidate(0.85, 3.0)
    assert pareto_front([dominated, slow_better, fast]) == [fast, slow_better]


@pytest.mark.slow
def test_search_returns_front_within_budget(small_cnn, small_digits, tmp_path):
    result = search_architectures(
        small_cnn,
        small_digits,
        threads=1,
        time_limit_s=60.0,
        space=TINY_SPACE,
        population=2,
        initial_epochs=1,
        child_epochs=1,
        final_epochs=1,
        max_candidates=3,
        latency_runs=10,
    )
    assert 1 <= len(result.candidates) <= 3
    assert result.front
    assert (
        any(candidate.inherited for candidate in result.candidates[2:])
        or len(result.candidates) < 3
    )
    latencies = [candidate.latency_ms for candidate in result.front]
    assert latencies == sorted(latencies)

    # A front member is a recipe step: built, distilled, exported and gated.
    artifact = apply_recipe(
        small_cnn,
        Recipe([result.front[0].config]),
        small_digits,
        cache=ArtifactCache(tmp_path / "cache"),
    )
    assert artifact.path.is_file()
    assert artifact.details["searched_macs"] == result.front[0].macs
