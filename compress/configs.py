"""Compression configs and recipes.

Each technique is one frozen dataclass deriving from ``TechniqueConfig``, registered with
``register_config`` under a stable ``TYPE`` name and a ``VERSION``. A config serializes as::

    {"type": "structured_pruning", "version": 1, "fields": {"ratio": 0.5, ...}}

and ``config_from_dict`` resolves ``type`` only through the registry of classes defined in
edgefleet, never by importing a name found in the data. A ``Recipe`` is an ordered tuple of
configs: steps on the torch model first, then steps on the exported ONNX graph.

This module imports neither torch nor onnx, so recipes can be read and validated anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Iterable, Mapping
from enum import Enum, StrEnum
from typing import Any, ClassVar, TypeVar

from edgefleet.compress.errors import ConfigError

__all__ = [
    "CalibrationMethod",
    "DynamicQuantizationConfig",
    "Fp16WeightsConfig",
    "ImportanceCriterion",
    "QuantizedType",
    "Recipe",
    "Stage",
    "StaticQuantizationConfig",
    "StructuredPruningConfig",
    "TechniqueConfig",
    "config_from_dict",
    "register_config",
    "registered_configs",
]

RECIPE_FORMAT = "edgefleet.recipe"
RECIPE_FORMAT_VERSION = 1


class Stage(StrEnum):
    """Model representation that a technique transforms."""

    TORCH = "torch"  # a torch.nn.Module, before ONNX export
    ONNX = "onnx"  # an exported ONNX graph


class ImportanceCriterion(StrEnum):
    """Channel ranking criterion of structured pruning."""

    MAGNITUDE = "magnitude"  # L2 norm of each channel's weights
    TAYLOR = "taylor"  # first-order Taylor estimate |w * dL/dw| on training batches


class CalibrationMethod(StrEnum):
    """Method that static quantization uses to pick activation ranges from calibration data."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class QuantizedType(StrEnum):
    """8-bit integer type of quantized activations or weights."""

    INT8 = "int8"
    UINT8 = "uint8"


class TechniqueConfig:
    """Base class of every compression config; subclasses are frozen dataclasses.

    Subclasses set ``TYPE`` (the stable serialized name), ``VERSION`` (bumped when a field
    changes meaning) and ``STAGE``, and check value ranges in ``validate``.
    """

    TYPE: ClassVar[str]
    VERSION: ClassVar[int]
    STAGE: ClassVar[Stage]

    def __post_init__(self) -> None:
        _coerce_and_check_types(self)
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` if a field is out of range."""

    def describe(self) -> str:
        """Return a short human-readable label such as ``prune 50% (magnitude)``."""
        return self.TYPE

    @classmethod
    def upgrade_fields(cls, version: int, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        """Return ``fields`` of an older serialized ``version`` as the current version's.

        Subclasses that bump ``VERSION`` override this for the versions they still read.
        Raises ``ConfigError`` for any version other than ``VERSION``.
        """
        if version != cls.VERSION:
            raise ConfigError(
                f"{cls.TYPE}: version {version} is not supported; this edgefleet reads version "
                f"{cls.VERSION}"
            )
        return fields

    def to_dict(self) -> dict[str, Any]:
        """Return the config as ``{"type", "version", "fields"}`` with JSON-safe values."""
        fields = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            fields[field.name] = value.value if isinstance(value, Enum) else value
        return {"type": self.TYPE, "version": self.VERSION, "fields": fields}


ConfigT = TypeVar("ConfigT", bound=type[TechniqueConfig])
_CONFIG_TYPES: dict[str, type[TechniqueConfig]] = {}


def register_config(cls: ConfigT) -> ConfigT:
    """Register a config class under its ``TYPE`` so ``config_from_dict`` can resolve it."""
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} must be a frozen dataclass to be registered")
    existing = _CONFIG_TYPES.get(cls.TYPE)
    if existing is not None and existing is not cls:
        raise TypeError(f"config type {cls.TYPE!r} is already registered by {existing.__name__}")
    _CONFIG_TYPES[cls.TYPE] = cls
    return cls


def registered_configs() -> tuple[type[TechniqueConfig], ...]:
    """Return every registered config class, sorted by ``TYPE``."""
    return tuple(_CONFIG_TYPES[name] for name in sorted(_CONFIG_TYPES))


def config_from_dict(data: Mapping[str, Any]) -> TechniqueConfig:
    """Build a config from its ``to_dict`` form; raises ``ConfigError`` on any mismatch."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
    unknown_keys = sorted(set(data) - {"type", "version", "fields"})
    if unknown_keys:
        raise ConfigError(f"unknown config key(s) {unknown_keys}; expected type, version, fields")

    type_name = data.get("type")
    cls = _CONFIG_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ConfigError(
            f"unknown config type {type_name!r}; registered types are {sorted(_CONFIG_TYPES)}"
        )
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{cls.TYPE}: version must be a positive integer, got {version!r}")

    fields = data.get("fields", {})
    if not isinstance(fields, Mapping):
        raise ConfigError(f"{cls.TYPE}: fields must be a JSON object, got {fields!r}")
    fields = cls.upgrade_fields(version, fields)
    known = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(
            f"{cls.TYPE}: unknown field(s) {unknown}; known fields are {sorted(known)}"
        )
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ConfigError(f"{cls.TYPE}: {exc}") from exc


class Recipe(tuple[TechniqueConfig, ...]):
    """An ordered tuple of configs: every torch-stage step comes before every ONNX step.

    The empty recipe is the fp32 baseline: the model exported to ONNX unchanged.
    """

    __slots__ = ()

    def __new__(cls, steps: Iterable[TechniqueConfig] = ()) -> Recipe:
        steps = tuple(steps)
        for step in steps:
            if not isinstance(step, TechniqueConfig):
                raise ConfigError(
                    f"recipe steps must be compression configs, got {type(step).__name__}"
                )
        stages = [step.STAGE for step in steps]
        if Stage.ONNX in stages and Stage.TORCH in stages[stages.index(Stage.ONNX) :]:
            raise ConfigError(
                f"recipe {_describe(steps)} applies a torch step after an ONNX step; "
                "put pruning and other torch steps before quantization"
            )
        return super().__new__(cls, steps)

    @property
    def name(self) -> str:
        """Human-readable label, ``fp32`` for the empty recipe."""
        return _describe(self)

    @property
    def torch_steps(self) -> tuple[TechniqueConfig, ...]:
        """Steps applied to the torch model before export."""
        return tuple(step for step in self if step.STAGE is Stage.TORCH)

    @property
    def onnx_steps(self) -> tuple[TechniqueConfig, ...]:
        """Steps applied to the exported ONNX graph."""
        return tuple(step for step in self if step.STAGE is Stage.ONNX)

    def to_list(self) -> list[dict[str, Any]]:
        """Return the steps as a list of ``TechniqueConfig.to_dict`` mappings."""
        return [step.to_dict() for step in self]

    @classmethod
    def from_list(cls, items: Iterable[Mapping[str, Any]]) -> Recipe:
        """Build a recipe from ``to_list`` output."""
        return cls(config_from_dict(item) for item in items)

    def to_json(self) -> str:
        """Return canonical JSON (sorted keys, no spaces); equal recipes give equal text."""
        document = {
            "format": RECIPE_FORMAT,
            "version": RECIPE_FORMAT_VERSION,
            "steps": self.to_list(),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        """Parse ``to_json`` output; raises ``ConfigError`` on malformed input."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"recipe is not valid JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != RECIPE_FORMAT:
            raise ConfigError(f"recipe JSON must be an object with format {RECIPE_FORMAT!r}")
        if document.get("version") != RECIPE_FORMAT_VERSION:
            raise ConfigError(
                f"recipe format version {document.get('version')!r} is not supported; "
                f"expected {RECIPE_FORMAT_VERSION}"
            )
        steps = document.get("steps")
        if not isinstance(steps, list):
            raise ConfigError("recipe JSON must have a list of steps")
        return cls.from_list(steps)


@register_config
@dataclasses.dataclass(frozen=True)
class StructuredPruningConfig(TechniqueConfig):
    """Remove whole channels with torch-pruning, then fine-tune on the training split.

    The dependency graph of torch-pruning keeps coupled layers consistent (residual adds,
    concatenations, depthwise convolutions), so tensors really shrink. The final classifier
    keeps its output size. With ``distill`` the unpruned model is the teacher: the loss is
    ``alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * cross_entropy``.
    """

    TYPE: ClassVar[str] = "structured_pruning"
    VERSION: ClassVar[int] = 1
    STAGE: ClassVar[Stage] = Stage.TORCH

    ratio: float = 0.5
    importance: ImportanceCriterion = ImportanceCriterion.MAGNITUDE
    finetune_epochs: int = 3
    learning_rate: float = 1e-3
    batch_size: int = 64
    distill: bool = True
    temperature: float = 4.0
    alpha: float = 0.7
    # Kept channel counts round down to multiples of this (see ChannelPruningConfig).
    round_to: int | None = 16
    seed: int = 0

    def validate(self) -> None:
        _check_range(self, "ratio", 0.0, 1.0, inclusive=False)
        _check_min(self, "finetune_epochs", 0)
        _check_range(self, "learning_rate", 0.0, 1.0, inclusive=False)
        _check_min(self, "batch_size", 1)
        _check_range(self, "temperature", 0.0, 100.0, inclusive=False)
        _check_range(self, "alpha", 0.0, 1.0, inclusive=True)
        if self.round_to is not None:
            _check_min(self, "round_to", 1)
        _check_min(self, "seed", 0)

    def describe(self) -> str:
        extras = [self.importance.value]
        if self.finetune_epochs:
            extras.append(f"{self.finetune_epochs} ep" + (" distilled" if self.distill else ""))
        return f"prune {self.ratio:.0%} ({', '.join(extras)})"


@register_config
@dataclasses.dataclass(frozen=True)
class StaticQuantizationConfig(TechniqueConfig):
    """Quantize weights and activations to 8 bits with onnxruntime (QDQ format).

    Activation ranges are calibrated on ``calibration_samples`` training samples. The
    variant is rejected when validation accuracy drops by more than ``max_accuracy_drop``
    (a fraction, 0.02 = 2 points) below the model it was quantized from.
    """

    TYPE: ClassVar[str] = "static_quantization"
    VERSION: ClassVar[int] = 1
    STAGE: ClassVar[Stage] = Stage.ONNX

    per_channel: bool = True
    calibration: CalibrationMethod = CalibrationMethod.MINMAX
    calibration_samples: int = 256
    activation_type: QuantizedType = QuantizedType.INT8
    reduce_range: bool = False
    max_accuracy_drop: float = 0.02
    weight_type: QuantizedType = QuantizedType.INT8
    # Accuracy-aware fallback: when the drop exceeds max_accuracy_drop, keep up to this many
    # of the most sensitive nodes in float32, one at a time, before rejecting the variant.
    max_fp32_nodes: int = 3

    def validate(self) -> None:
        _check_min(self, "calibration_samples", 1)
        _check_range(self, "max_accuracy_drop", 0.0, 1.0, inclusive=True)
        _check_min(self, "max_fp32_nodes", 0)

    def describe(self) -> str:
        granularity = "per-channel" if self.per_channel else "per-tensor"
        extras = [granularity, self.calibration.value]
        if self.activation_type is QuantizedType.UINT8:
            extras.append("uint8 activations")
        if self.reduce_range:
            extras.append("7-bit weights")
        if self.weight_type is QuantizedType.UINT8:
            extras.append("uint8 weights")
        return f"int8 static ({', '.join(extras)})"


def _describe(steps: Iterable[TechniqueConfig]) -> str:
    labels = [step.describe() for step in steps]
    return " + ".join(labels) if labels else "fp32"


def _coerce_and_check_types(config: TechniqueConfig) -> None:
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, field.name)
        expected = hints[field.name]
        coerced = _coerce(type(config).TYPE, field.name, value, expected)
        if coerced is not value:
            object.__setattr__(config, field.name, coerced)


def _coerce(type_name: str, name: str, value: Any, expected: Any) -> Any:
    options = typing.get_args(expected) if typing.get_origin(expected) is not None else (expected,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if isinstance(option, type) and issubclass(option, Enum):
            try:
                return option(value)
            except ValueError:
                allowed = [member.value for member in option]
                raise ConfigError(
                    f"{type_name}: invalid {name} {value!r}; expected one of {allowed}"
                ) from None
        if option is bool and isinstance(value, bool):
            return value
        # bool is an int subclass; True as a ratio or count is a mistake, not a number.
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{type_name}: {name} must be finite, got {value!r}")
            return float(value)
    raise ConfigError(f"{type_name}: {name} must be of type {_type_label(expected)}, got {value!r}")


def _type_label(expected: Any) -> str:
    options = typing.get_args(expected) or (expected,)
    return " or ".join(getattr(option, "__name__", str(option)) for option in options)


def _check_range(config: Any, name: str, low: float, high: float, *, inclusive: bool) -> None:
    value = getattr(config, name)
    inside = low <= value <= high if inclusive else low < value < high
    if not inside:
        bounds = f"[{low}, {high}]" if inclusive else f"({low}, {high})"
        raise ConfigError(f"{config.TYPE}: {name} must be in {bounds}, got {value!r}")


def _check_min(config: Any, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if value < minimum:
        raise ConfigError(f"{config.TYPE}: {name} must be >= {minimum}, got {value!r}")


@register_config
@dataclasses.dataclass(frozen=True)
class DynamicQuantizationConfig(TechniqueConfig):
    """Quantize weights to 8 bits ahead of time and activations at run time (onnxruntime).

    Meant for transformer and other MatMul-heavy models. By default only MatMul and Gemm
    nodes are quantized: with ``include_conv`` Conv nodes become ConvInteger too, which
    onnxruntime runs several times slower than float32 Conv on CPU (4x on the digits CNN
    at one thread, onnxruntime 1.32 on an AVX-512 x86 host), so the planner never offers
    it for convolutional models. ``include_gather`` also stores embedding tables (Gather
    nodes) as 8-bit, which is most of a BERT encoder's file size.

    Per-channel weights are the default because per-tensor scales cost accuracy on
    transformers: on all-MiniLM-L6-v2 the mean cosine similarity to fp32 sentence
    embeddings is 0.96 per tensor and 0.99 per channel (``benchmarks/compress_bench.py``).

    The variant is rejected when validation accuracy drops by more than
    ``max_accuracy_drop`` (a fraction, 0.02 = 2 points) after the fallback has kept up to
    ``max_fp32_nodes`` of the most sensitive quantized nodes in float32.
    """

    TYPE: ClassVar[str] = "dynamic_quantization"
    # Version 2 added max_fp32_nodes. Version 1 configs load with max_fp32_nodes=0, the
    # gate without fallback that version 1 ran.
    VERSION: ClassVar[int] = 2
    STAGE: ClassVar[Stage] = Stage.ONNX

    per_channel: bool = True
    weight_type: QuantizedType = QuantizedType.INT8
    reduce_range: bool = False
    include_conv: bool = False
    include_gather: bool = False
    max_accuracy_drop: float = 0.02
    # Accuracy-aware fallback: when the drop exceeds max_accuracy_drop, keep up to this many
    # of the most sensitive nodes in float32, one at a time, before rejecting the variant.
    max_fp32_nodes: int = 3

    def validate(self) -> None:
        _check_range(self, "max_accuracy_drop", 0.0, 1.0, inclusive=True)
        _check_min(self, "max_fp32_nodes", 0)

    @classmethod
    def upgrade_fields(cls, version: int, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        if version == 1 and "max_fp32_nodes" not in fields:
            return {**fields, "max_fp32_nodes": 0}
        return super().upgrade_fields(version, fields)

    def describe(self) -> str:
        ops = ["MatMul", "Gemm", *(["Conv"] if self.include_conv else [])]
        ops += ["Gather"] if self.include_gather else []
        scope = ", ".join(ops[:-1]) + " and " + ops[-1]
        return f"int8 dynamic ({scope}{', per-channel' if self.per_channel else ''})"


@register_config
@dataclasses.dataclass(frozen=True)
class Fp16WeightsConfig(TechniqueConfig):
    """Store float32 weights as float16, each followed by a Cast back to float32.

    This halves the file (download and storage) and nothing else: onnxruntime folds the
    Casts when it loads the session, so compute, latency and session memory stay those of
    float32. Weights larger than the float16 range are kept in float32.
    """

    TYPE: ClassVar[str] = "fp16_weights"
    VERSION: ClassVar[int] = 1
    STAGE: ClassVar[Stage] = Stage.ONNX

    # Initializers with fewer elements stay float32 (biases, scales): converting them
    # saves almost nothing and adds a Cast node each.
    min_elements: int = 16
    max_accuracy_drop: float = 0.01

    def validate(self) -> None:
        _check_min(self, "min_elements", 1)
        _check_range(self, "max_accuracy_drop", 0.0, 1.0, inclusive=True)

    def describe(self) -> str:
        return "fp16 weights"
