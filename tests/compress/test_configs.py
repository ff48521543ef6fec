from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

from edgefleet.compress import (
    ConfigError,
    Recipe,
    StaticQuantizationConfig,
    StructuredPruningConfig,
    config_from_dict,
    registered_configs,
)
from edgefleet.compress.handlers import handler_for

# Importing the pipeline registers every technique's config and handler, as apply_recipe
# does, so the parametrized tests cover all of them when this file runs alone.
importlib.import_module("edgefleet.compress.pipeline")

# The techniques edgefleet ships; other test modules register their own for single cases.
SHIPPED_CONFIGS = [cls for cls in registered_configs() if cls.__module__.startswith("edgefleet.")]


@pytest.mark.parametrize("config_type", SHIPPED_CONFIGS, ids=lambda cls: cls.TYPE)
def test_config_round_trips_through_json(config_type):
    config = config_type()
    data = json.loads(json.dumps(config.to_dict()))
    assert data["type"] == config_type.TYPE
    assert data["version"] == config_type.VERSION
    assert config_from_dict(data) == config


@pytest.mark.parametrize("config_type", SHIPPED_CONFIGS, ids=lambda cls: cls.TYPE)
def test_config_is_frozen_and_has_handler(config_type):
    config = config_type()
    field = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, field, getattr(config, field))
    assert callable(handler_for(config))


@pytest.mark.parametrize(
    ("config_type", "fields", "message"),
    [
        (StructuredPruningConfig, {"ratio": 0.0}, "ratio must be in"),
        (StructuredPruningConfig, {"ratio": 1.0}, "ratio must be in"),
        (StructuredPruningConfig, {"ratio": True}, "ratio must be of type float"),
        (StructuredPruningConfig, {"ratio": float("nan")}, "ratio must be finite"),
        (StructuredPruningConfig, {"importance": "random"}, "invalid importance 'random'"),
        (StructuredPruningConfig, {"finetune_epochs": -1}, "finetune_epochs must be >= 0"),
        (StructuredPruningConfig, {"finetune_epochs": 2.5}, "finetune_epochs must be of type"),
        (StructuredPruningConfig, {"alpha": 1.5}, "alpha must be in"),
        (StructuredPruningConfig, {"temperature": 0}, "temperature must be in"),
        (StructuredPruningConfig, {"round_to": 0}, "round_to must be >= 1"),
        (StaticQuantizationConfig, {"calibration": "mse"}, "invalid calibration 'mse'"),
        (StaticQuantizationConfig, {"calibration_samples": 0}, "calibration_samples must be"),
        (StaticQuantizationConfig, {"per_channel": 1}, "per_channel must be of type bool"),
        (StaticQuantizationConfig, {"activation_type": "int4"}, "invalid activation_type"),
        (StaticQuantizationConfig, {"max_accuracy_drop": -0.1}, "max_accuracy_drop must be in"),
    ],
)
def test_config_rejects_invalid_field(config_type, fields, message):
    with pytest.raises(ConfigError, match=message):
        config_type(**fields)


def test_config_accepts_enum_values_as_strings():
    config = StructuredPruningConfig(importance="taylor")
    assert config.importance.value == "taylor"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "os.system", "version": 1, "fields": {}}, "unknown config type 'os.system'"),
        ({"type": "structured_pruning", "version": 2, "fields": {}}, "version 2 is not supported"),
        ({"type": "structured_pruning", "version": "1", "fields": {}}, "version must be"),
        ({"type": "structured_pruning", "version": 1, "fields": {"sparsity": 1}}, "unknown field"),
        ({"type": "structured_pruning", "version": 1, "extra": 1}, "unknown config key"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_config_from_dict_rejects_bad_data(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_recipe_round_trips_through_json():
    recipe = Recipe([StructuredPruningConfig(ratio=0.3), StaticQuantizationConfig()])
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_json(Recipe().to_json()) == Recipe()
    assert recipe.to_json() == Recipe(list(recipe)).to_json()


def test_recipe_rejects_torch_step_after_onnx_step():
    with pytest.raises(ConfigError, match="torch step after an ONNX step"):
        Recipe([StaticQuantizationConfig(), StructuredPruningConfig()])


def test_recipe_rejects_non_config_steps():
    with pytest.raises(ConfigError, match="must be compression configs"):
        Recipe([{"type": "structured_pruning"}])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"format": "other", "version": 1, "steps": []}', "format"),
        ('{"format": "edgefleet.recipe", "version": 9, "steps": []}', "version 9"),
        ('{"format": "edgefleet.recipe", "version": 1, "steps": {}}', "list of steps"),
    ],
)
def test_recipe_from_json_rejects_malformed_text(text, message):
    with pytest.raises(ConfigError, match=message):
        Recipe.from_json(text)


def test_recipe_name_describes_steps():
    assert Recipe().name == "fp32"
    name = Recipe([StructuredPruningConfig(ratio=0.5), StaticQuantizationConfig()]).name
    assert name.startswith("prune 50%")
    assert "int8" in name
