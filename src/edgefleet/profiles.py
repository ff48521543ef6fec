"""Device profiles: the declared hardware and budgets of a class of devices.

A profile is a TOML file such as ``deploy/profiles/raspberry-pi-4b.toml``::

    name = "raspberry-pi-4b"
    cpu_arch = "aarch64"
    cpu_cores = 4
    cpu_flags = ["neon", "asimd", "fp16"]
    memory_mb = 4096
    model_memory_budget_mb = 256
    latency_budget_ms = 20.0
    onnxruntime_version = "1.18.0"   # optional
    inference_threads = 2             # optional, defaults to cpu_cores

Every field is validated when the profile enters the system, whether from a file or from
a registration message, and the error names the field and the expected value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from edgefleet.errors import ProfileError
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["CpuArch", "DeviceProfile", "load_profile", "parse_profile"]


class CpuArch(StrEnum):
    """CPU architectures the agent runs on, named as ``uname -m`` prints them."""

    AARCH64 = "aarch64"
    ARMV7L = "armv7l"
    X86_64 = "x86_64"


_ARCH_TO_PROTO = {
    CpuArch.AARCH64: fleet_pb2.CPU_ARCH_AARCH64,
    CpuArch.ARMV7L: fleet_pb2.CPU_ARCH_ARMV7L,
    CpuArch.X86_64: fleet_pb2.CPU_ARCH_X86_64,
}
_PROTO_TO_ARCH = {value: key for key, value in _ARCH_TO_PROTO.items()}

# CPU features that change which kernels onnxruntime picks, spelled as in /proc/cpuinfo.
# asimddp is the Arm dot-product extension (int8 speed-up); avx512_vnni and avx_vnni are
# the x86 counterparts. Anything else is rejected so that a typo does not silently
# disable an optimisation.
KNOWN_CPU_FLAGS = frozenset(
    {
        "neon",
        "asimd",
        "asimddp",
        "asimdhp",
        "fp16",
        "i8mm",
        "sve",
        "sse4_1",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
    }
)

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Upper bounds that catch unit mistakes (memory in bytes, budgets in microseconds) and
# values that onnxruntime's 32-bit thread count cannot take.
MAX_CPU_CORES = 1024
MAX_MEMORY_MB = 16 * 1024 * 1024
MAX_LATENCY_BUDGET_MS = 3_600_000.0
_VERSION = re.compile(r"\d+\.\d+(\.\d+)?")
_REQUIRED = (
    "name",
    "cpu_arch",
    "cpu_cores",
    "cpu_flags",
    "memory_mb",
    "model_memory_budget_mb",
    "latency_budget_ms",
)
_OPTIONAL = ("onnxruntime_version", "inference_threads")


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceProfile:
    """Declared hardware and budgets of a class of devices; see the module docstring."""

    name: str
    cpu_arch: CpuArch
    cpu_cores: int
    cpu_flags: tuple[str, ...]
    memory_mb: int
    model_memory_budget_mb: int
    latency_budget_ms: float
    onnxruntime_version: str | None = None
    inference_threads: int = 0

    def __post_init__(self) -> None:
        # 0 means "one thread per core"; resolving it here keeps equality and the
        # fingerprint independent of whether the file spelled the default out.
        if self.inference_threads == 0:
            object.__setattr__(self, "inference_threads", self.cpu_cores)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the hardware and budget fields; equal profiles share variants."""
        fields = self.to_dict()
        fields.pop("name")
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Return the profile as plain TOML/JSON-compatible values."""
        data: dict[str, Any] = {
            "name": self.name,
            "cpu_arch": self.cpu_arch.value,
            "cpu_cores": self.cpu_cores,
            "cpu_flags": list(self.cpu_flags),
            "memory_mb": self.memory_mb,
            "model_memory_budget_mb": self.model_memory_budget_mb,
            "latency_budget_ms": self.latency_budget_ms,
            "inference_threads": self.inference_threads,
        }
        if self.onnxruntime_version is not None:
            data["onnxruntime_version"] = self.onnxruntime_version
        return data

    def to_proto(self) -> fleet_pb2.DeviceProfile:
        return fleet_pb2.DeviceProfile(
            name=self.name,
            cpu_arch=_ARCH_TO_PROTO[self.cpu_arch],
            cpu_cores=self.cpu_cores,
            cpu_flags=list(self.cpu_flags),
            memory_mb=self.memory_mb,
            model_memory_budget_mb=self.model_memory_budget_mb,
            latency_budget_ms=self.latency_budget_ms,
            onnxruntime_version=self.onnxruntime_version or "",
            inference_threads=self.inference_threads,
        )

    @classmethod
    def from_proto(cls, message: fleet_pb2.DeviceProfile) -> DeviceProfile:
        """Validate a profile received from a peer; raises ``ProfileError``."""
        if message.cpu_arch not in _PROTO_TO_ARCH:
            raise ProfileError(
                f"profile {message.name!r}: invalid cpu_arch enum value {message.cpu_arch}; "
                f"expected one of {sorted(arch.value for arch in CpuArch)}"
            )
        data: dict[str, Any] = {
            "name": message.name,
            "cpu_arch": _PROTO_TO_ARCH[message.cpu_arch].value,
            "cpu_cores": message.cpu_cores,
            "cpu_flags": list(message.cpu_flags),
            "memory_mb": message.memory_mb,
            "model_memory_budget_mb": message.model_memory_budget_mb,
            "latency_budget_ms": message.latency_budget_ms,
        }
        if message.onnxruntime_version:
            data["onnxruntime_version"] = message.onnxruntime_version
        if message.inference_threads:
            data["inference_threads"] = message.inference_threads
        return parse_profile(data, source="registration message")


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and validate a profile TOML file; raises ``ProfileError`` naming the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"profile file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read profile file {path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile file {path} is not valid TOML: {exc}") from exc
    return parse_profile(data, source=str(path))


def parse_profile(data: Mapping[str, Any], *, source: str = "profile") -> DeviceProfile:
    """Validate a mapping of profile fields; raises ``ProfileError`` naming the field."""
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ProfileError(
            f"{source}: unknown field(s) {', '.join(unknown)}; "
            f"allowed fields are {', '.join(_REQUIRED + _OPTIONAL)}"
        )
    missing = [field for field in _REQUIRED if field not in data]
    if missing:
        raise ProfileError(f"{source}: missing required field(s) {', '.join(missing)}")

    name = data["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ProfileError(
            f"{source}: invalid name {name!r}; use 1-64 characters from a-z, 0-9, '.', '_' and '-'"
        )
    cpu_cores = _positive_int(data, "cpu_cores", source, maximum=MAX_CPU_CORES)
    memory_mb = _positive_int(data, "memory_mb", source, maximum=MAX_MEMORY_MB)
    model_memory_budget_mb = _positive_int(
        data, "model_memory_budget_mb", source, maximum=MAX_MEMORY_MB
    )
    if model_memory_budget_mb > memory_mb:
        raise ProfileError(
            f"{source}: model_memory_budget_mb ({model_memory_budget_mb}) exceeds "
            f"memory_mb ({memory_mb}); the model budget must fit in device memory"
        )
    inference_threads = 0
    if "inference_threads" in data:
        inference_threads = _positive_int(data, "inference_threads", source, maximum=MAX_CPU_CORES)
        if inference_threads > cpu_cores:
            raise ProfileError(
                f"{source}: inference_threads ({inference_threads}) exceeds cpu_cores "
                f"({cpu_cores}); use at most one thread per core"
            )

    return DeviceProfile(
        name=name,
        cpu_arch=_parse_arch(data["cpu_arch"], source),
        cpu_cores=cpu_cores,
        cpu_flags=_parse_flags(data["cpu_flags"], source),
        memory_mb=memory_mb,
        model_memory_budget_mb=model_memory_budget_mb,
        latency_budget_ms=_positive_float(data, "latency_budget_ms", source),
        onnxruntime_version=_parse_version(data.get("onnxruntime_version"), source),
        inference_threads=inference_threads,
    )


def _positive_int(data: Mapping[str, Any], field: str, source: str, *, maximum: int) -> int:
    value = data[field]
    # bool is an int subclass; "true" as a core count is a typo, not a number.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ProfileError(f"{source}: {field} must be a positive integer, got {value!r}")
    if value > maximum:
        raise ProfileError(f"{source}: {field} must be at most {maximum}, got {value!r}")
    return value


def _positive_float(data: Mapping[str, Any], field: str, source: str) -> float:
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError(f"{source}: {field} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ProfileError(f"{source}: {field} must be a positive finite number, got {value!r}")
    if value > MAX_LATENCY_BUDGET_MS:
        raise ProfileError(
            f"{source}: {field} must be at most {MAX_LATENCY_BUDGET_MS:g}, got {value!r}"
        )
    return float(value)


def _parse_arch(value: Any, source: str) -> CpuArch:
    try:
        return CpuArch(value)
    except ValueError:
        raise ProfileError(
            f"{source}: unknown cpu_arch {value!r}; expected one of "
            f"{', '.join(arch.value for arch in CpuArch)}"
        ) from None


def _parse_flags(value: Any, source: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(flag, str) for flag in value):
        raise ProfileError(f"{source}: cpu_flags must be a list of strings, got {value!r}")
    unknown = sorted(set(value) - KNOWN_CPU_FLAGS)
    if unknown:
        raise ProfileError(
            f"{source}: unknown cpu_flags {unknown}; known flags are "
            f"{', '.join(sorted(KNOWN_CPU_FLAGS))}"
        )
    return tuple(sorted(set(value)))


def _parse_version(value: Any, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise ProfileError(f"{source}: onnxruntime_version must look like '1.18.0', got {value!r}")
    return value
