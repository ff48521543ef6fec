"""ONNX opset and IR version compatibility with the onnxruntime release on a device.

A model stamped with a newer default-domain opset or IR version than the device's
onnxruntime implements fails to load there, even when this host's onnxruntime runs it.
``make_compatible`` checks a variant against the profile's ``onnxruntime_version`` and
down-converts it with ``onnx.version_converter`` when it can, or raises ``ExportError``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import onnx
from onnx import version_converter

from edgefleet.compress.errors import ConfigError, ExportError

__all__ = [
    "OnnxSupport",
    "OpsetCompatibility",
    "make_compatible",
    "onnx_support",
]

logger = logging.getLogger(__name__)

# onnxruntime minor release -> (max default-domain opset, max IR version) it implements.
# Source: "ONNX Runtime compatibility" in onnxruntime's docs (docs/reference/compatibility.md),
# which lists releases up to 1.20. Later rows follow the ONNX release each onnxruntime
# release builds against (1.21 and 1.22: ONNX 1.17, opset 22 and IR 10; 1.23: ONNX 1.18,
# opset 23 and IR 11).
# NOTE: the rows after 1.20 come from release notes, not from that table.
_SUPPORT_TABLE: dict[tuple[int, int], tuple[int, int]] = {
    (1, 0): (11, 6),
    (1, 1): (11, 6),
    (1, 2): (11, 6),
    (1, 3): (12, 7),
    (1, 4): (12, 7),
    (1, 5): (12, 7),
    (1, 6): (13, 7),
    (1, 7): (13, 7),
    (1, 8): (14, 7),
    (1, 9): (15, 8),
    (1, 10): (15, 8),
    (1, 11): (16, 8),
    (1, 12): (17, 8),
    (1, 13): (17, 8),
    (1, 14): (18, 8),
    (1, 15): (19, 8),
    (1, 16): (19, 9),
    (1, 17): (20, 9),
    (1, 18): (21, 10),
    (1, 19): (21, 10),
    (1, 20): (21, 10),
    (1, 21): (22, 10),
    (1, 22): (22, 10),
    (1, 23): (23, 11),
}
# onnx.version_converter has no adapters below opset 7, and no onnxruntime release runs
# models below it either.
_MIN_OPSET = 7


@dataclasses.dataclass(frozen=True)
class OnnxSupport:
    """Newest default-domain opset and IR version that an onnxruntime release loads."""

    onnxruntime_version: str
    max_opset: int
    max_ir_version: int


@dataclasses.dataclass(frozen=True)
class OpsetCompatibility:
    """Result of ``make_compatible``: the versions before and after, for the manifest."""

    onnxruntime_version: str | None
    max_opset: int | None
    source_opset: int
    opset: int
    source_ir_version: int
    ir_version: int

    @property
    def converted(self) -> bool:
        """True when the file was rewritten to lower the opset or IR version."""
        return (self.opset, self.ir_version) != (self.source_opset, self.source_ir_version)

    def to_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "converted": self.converted}


def onnx_support(onnxruntime_version: str) -> OnnxSupport:
    """Return what ``onnxruntime_version`` (``"1.18.0"``) loads; raises ``ConfigError``.

    A release newer than the table gets the newest row, a lower bound, because every
    release implements at least the opsets of the one before.
    """
    try:
        major, minor = (int(part) for part in onnxruntime_version.split(".")[:2])
    except ValueError:
        raise ConfigError(
            f"invalid onnxruntime version {onnxruntime_version!r}; expected 'MAJOR.MINOR[.PATCH]'"
        ) from None
    key = (major, minor)
    if key < min(_SUPPORT_TABLE):
        raise ConfigError(
            f"onnxruntime {onnxruntime_version} is older than 1.0, which edgefleet does not "
            "support; update onnxruntime on the device"
        )
    if key not in _SUPPORT_TABLE:
        key = max(row for row in _SUPPORT_TABLE if row <= key)
    max_opset, max_ir_version = _SUPPORT_TABLE[key]
    return OnnxSupport(onnxruntime_version, max_opset, max_ir_version)


def make_compatible(
    source: str | Path, destination: str | Path, onnxruntime_version: str | None
) -> OpsetCompatibility:
    """Write ``source`` to ``destination`` in a form ``onnxruntime_version`` loads.

    The default-domain opset is lowered with ``onnx.version_converter`` and the IR version
    is lowered in place when they exceed what the release implements. When nothing needs
    to change, ``destination`` is not written. Raises ``ExportError`` when the converter
    has no adapter for an operator in the graph. ``None`` means the device runs the same
    onnxruntime as this host, so nothing is checked.
    """
    model = onnx.load(str(source))
    source_opset = _default_opset(model)
    result = OpsetCompatibility(
        onnxruntime_version=onnxruntime_version,
        max_opset=None,
        source_opset=source_opset,
        opset=source_opset,
        source_ir_version=model.ir_version,
        ir_version=model.ir_version,
    )
    if onnxruntime_version is None:
        return result
    support = onnx_support(onnxruntime_version)
    result = dataclasses.replace(result, max_opset=support.max_opset)
    if source_opset <= support.max_opset and model.ir_version <= support.max_ir_version:
        return result

    if source_opset > support.max_opset:
        model = _convert_opset(model, support, source)
    # NOTE: lowering the IR version only relabels the file. It is valid because the
    # exporter and quantizer use no IR 9+ feature (float8, int4 or function overloads),
    # and onnx.checker below rejects a file that does.
    model.ir_version = min(model.ir_version, support.max_ir_version)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise ExportError(
            f"{source}: the model converted for onnxruntime {onnxruntime_version} (opset "
            f"{support.max_opset}, IR {support.max_ir_version}) fails onnx.checker: {exc}"
        ) from exc
    onnx.save(model, str(destination))
    logger.info(
        "converted %s from opset %d IR %d to opset %d IR %d for onnxruntime %s",
        source,
        source_opset,
        result.source_ir_version,
        _default_opset(model),
        model.ir_version,
        onnxruntime_version,
    )
    return dataclasses.replace(result, opset=_default_opset(model), ir_version=model.ir_version)


def _convert_opset(
    model: onnx.ModelProto, support: OnnxSupport, source: str | Path
) -> onnx.ModelProto:
    if support.max_opset < _MIN_OPSET:
        raise ExportError(
            f"{source}: onnxruntime {support.onnxruntime_version} implements opset "
            f"{support.max_opset}, below the oldest opset edgefleet converts to ({_MIN_OPSET})"
        )
    try:
        converted = version_converter.convert_version(model, support.max_opset)
    except Exception as exc:  # the converter raises RuntimeError or ConvertError per adapter
        operators = sorted({node.op_type for node in model.graph.node})
        raise ExportError(
            f"{source}: cannot convert from opset {_default_opset(model)} to opset "
            f"{support.max_opset}, the newest that onnxruntime {support.onnxruntime_version} "
            f"implements: {exc}. The graph uses {', '.join(operators)}; update onnxruntime "
            "on the device or export at a lower opset"
        ) from exc
    return converted


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError("ONNX model imports no default-domain opset")
