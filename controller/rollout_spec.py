"""What an operator asks of a rollout: its target devices, its waves and its health gates.

These are frozen, validated value types. Each has a ``parse`` or ``from_mapping`` form for
the command line and the HTTP API, and a ``to_dict`` form that the database stores and
``from_mapping`` reads back.

Waves are cumulative: ``("1", "25%", "100%")`` updates one device first (the canary), then
brings the updated share to a quarter of the target, then to all of it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from edgefleet.controller.errors import InvalidRolloutError
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_device_id

__all__ = [
    "DEFAULT_WAVES",
    "MAX_BASELINE_S",
    "MAX_DEPLOY_TIMEOUT_S",
    "MAX_MIN_SAMPLES",
    "MAX_SOAK_S",
    "GateConfig",
    "Target",
    "TargetKind",
    "Wave",
    "parse_waves",
    "wave_sizes",
]


class TargetKind(StrEnum):
    """Which devices a rollout covers."""

    ALL = "all"  # every registered device
    PROFILE = "profile"  # the devices whose profile has this name
    DEVICES = "devices"  # an explicit list of device ids


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The devices a rollout covers: all of them, one profile by name, or listed ids.

    Build one with ``Target.all()``, ``Target.for_profile(name)``,
    ``Target.for_devices(ids)`` or ``Target.parse(text)``.
    """

    kind: TargetKind
    profile: str | None = None
    device_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind is TargetKind.PROFILE and not self.profile:
            raise InvalidRolloutError("a profile target needs a profile name, got none")
        if self.kind is TargetKind.DEVICES:
            if not self.device_ids:
                raise InvalidRolloutError(
                    "the target lists no devices; name at least one device id, "
                    "or target 'all' or 'profile:NAME'"
                )
            duplicates = sorted({d for d in self.device_ids if self.device_ids.count(d) > 1})
            if duplicates:
                raise InvalidRolloutError(
                    f"the target lists device(s) {', '.join(duplicates)} more than once"
                )
            for device_id in self.device_ids:
                try:
                    validate_device_id(device_id)
                except InvalidInputError as exc:
                    raise InvalidRolloutError(f"invalid device id in the target: {exc}") from exc

    @classmethod
    def all(cls) -> Target:
        return cls(TargetKind.ALL)

    @classmethod
    def for_profile(cls, name: str) -> Target:
        return cls(TargetKind.PROFILE, profile=name)

    @classmethod
    def for_devices(cls, device_ids: Iterable[str]) -> Target:
        return cls(TargetKind.DEVICES, device_ids=tuple(device_ids))

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse ``all``, ``profile:NAME`` or ``devices:ID,ID,...``."""
        kind, _, rest = text.strip().partition(":")
        if kind == "all" and not rest:
            return cls.all()
        if kind == "profile":
            return cls.for_profile(rest.strip())
        if kind == "devices":
            return cls.for_devices(part.strip() for part in rest.split(",") if part.strip())
        raise InvalidRolloutError(
            f"invalid rollout target {text!r}: use 'all', 'profile:NAME' or 'devices:ID,ID,...'"
        )

    def describe(self) -> str:
        """Return the target in the form ``parse`` reads."""
        if self.kind is TargetKind.PROFILE:
            return f"profile:{self.profile}"
        if self.kind is TargetKind.DEVICES:
            return "devices:" + ",".join(self.device_ids)
        return "all"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "profile": self.profile,
            "device_ids": list(self.device_ids),
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Target:
        try:
            kind = TargetKind(data["kind"])
        except (KeyError, ValueError):
            allowed = ", ".join(kind.value for kind in TargetKind)
            raise InvalidRolloutError(
                f"invalid rollout target kind {data.get('kind')!r}; use one of {allowed}"
            ) from None
        return cls(
            kind,
            profile=data.get("profile"),
            device_ids=tuple(data.get("device_ids") or ()),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Wave:
    """The cumulative size a rollout reaches at the end of one wave.

    Exactly one of ``count`` (devices) and ``percent`` (of the target, rounded up) is set.
    """

    count: int | None = None
    percent: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.percent is None):
            raise InvalidRolloutError("a wave sets exactly one of count and percent")
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise InvalidRolloutError(
                f"a wave's device count must be at least 1, got {self.count!r}"
            )
        if self.percent is not None and not (
            isinstance(self.percent, int | float)
            and math.isfinite(self.percent)
            and 0 < self.percent <= 100
        ):
            raise InvalidRolloutError(
                f"a wave's percentage must be above 0 and at most 100, got {self.percent!r}"
            )

    @classmethod
    def parse(cls, value: Wave | str | int) -> Wave:
        """Parse ``"5%"`` (a share of the target) or ``"1"`` / ``1`` (a device count)."""
        if isinstance(value, Wave):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(count=value)
        if not isinstance(value, str):
            raise InvalidRolloutError(
                f"invalid wave {value!r}: use a device count such as 1 or a share such as '25%'"
            )
        text = value.strip()
        try:
            number = float(text[:-1]) if text.endswith("%") else int(text)
        except ValueError:
            raise InvalidRolloutError(
                f"invalid wave {value!r}: use a device count such as 1 or a share such as '25%'"
            ) from None
        if text.endswith("%"):
            return cls(percent=number)
        return cls(count=int(number))

    def describe(self) -> str:
        """Return the wave in the form ``parse`` reads: ``"3"`` or ``"25%"``."""
        if self.count is not None:
            return str(self.count)
        assert self.percent is not None
        return f"{self.percent:g}%"

    def size(self, total: int) -> int:
        """Return how many of ``total`` devices the rollout has reached after this wave."""
        if self.count is not None:
            return min(self.count, total)
        assert self.percent is not None
        return min(total, max(1, math.ceil(total * self.percent / 100 - 1e-9)))


DEFAULT_WAVES: tuple[Wave, ...] = (Wave(count=1), Wave(percent=25.0), Wave(percent=100.0))


def parse_waves(waves: Sequence[Wave | str | int] | str) -> tuple[Wave, ...]:
    """Parse and check waves: each larger than the one before, the last one 100%.

    A comma-separated string such as ``"1,25%,100%"`` is accepted too. Raises
    ``InvalidRolloutError`` naming the wave at fault.
    """
    if isinstance(waves, str):
        parts = waves.split(",")
        if not waves.strip():
            parts = []
        empty = [index + 1 for index, part in enumerate(parts) if not part.strip()]
        if empty:
            raise InvalidRolloutError(
                f"wave {empty[0]} of {waves!r} is empty; give each wave a device count or a "
                "share, for example 1,25%,100%"
            )
        waves = parts
    parsed = tuple(Wave.parse(wave) for wave in waves)
    if not parsed:
        raise InvalidRolloutError("a rollout needs at least one wave, for example 1,25%,100%")
    for previous, wave in itertools.pairwise(parsed):
        if previous.percent == 100:
            raise InvalidRolloutError(
                f"waves must increase, but {wave.describe()} follows 100%, which is the whole "
                "target; end the waves at 100%, for example 1,25%,100%"
            )
        same_kind = (previous.count is None) == (wave.count is None)
        previous_value = previous.count if previous.count is not None else previous.percent
        value = wave.count if wave.count is not None else wave.percent
        assert previous_value is not None and value is not None
        if same_kind and value <= previous_value:
            raise InvalidRolloutError(
                f"waves must increase, but {wave.describe()} follows {previous.describe()}; "
                "each wave is the cumulative size, for example 1,25%,100%"
            )
    if parsed[-1].percent != 100:
        raise InvalidRolloutError(
            f"the last wave is {parsed[-1].describe()}, but it must be 100% so the rollout "
            "reaches every target device"
        )
    return parsed


def wave_sizes(waves: Sequence[Wave], total: int) -> list[int]:
    """Return the number of devices each wave adds when the target has ``total`` devices.

    Waves that add no device (``"1"`` then ``"5%"`` of ten devices) are dropped.
    Raises ``InvalidRolloutError`` when a wave, counted in devices, is smaller than the one
    before it, which only mixing counts and percentages can cause.
    """
    sizes: list[int] = []
    reached = 0
    for previous, wave in zip((None, *waves), waves, strict=False):
        cumulative = wave.size(total)
        if cumulative < reached:
            assert previous is not None
            raise InvalidRolloutError(
                f"wave {wave.describe()} reaches {cumulative} of {total} devices, fewer than "
                f"the {reached} of wave {previous.describe()} before it; waves must increase"
            )
        if cumulative > reached:
            sizes.append(cumulative - reached)
            reached = cumulative
    return sizes


# Upper bounds of the gate settings, in seconds and samples.
MAX_SOAK_S = 86_400.0
MAX_BASELINE_S = 86_400.0
MAX_DEPLOY_TIMEOUT_S = 604_800.0
MAX_MIN_SAMPLES = 100_000


@dataclasses.dataclass(frozen=True, slots=True)
class GateConfig:
    """Health gates that each wave must pass before the next one starts.

    A device of the wave is unhealthy when its deployment failed (the agent reported
    FAILED or ROLLED_BACK, or no report came within ``deploy_timeout_s``), or when its
    served p95 latency over the soak rose more than ``max_p95_regression`` above its own
    p95 on the previous variant. The wave fails when the unhealthy share of its devices
    is above ``max_failure_rate``; a failed wave halts the rollout and reverts the devices
    it updated.
    """

    # Share of a wave's devices that may be unhealthy, 0 to 1; 0 tolerates none.
    max_failure_rate: float = 0.0
    # Allowed rise of a device's p95, as a fraction: 0.25 allows 25 % slower.
    max_p95_regression: float = 0.25
    # Seconds a wave runs after its last device became active, before the latency gate.
    soak_s: float = 60.0
    # Samples with served requests needed on each side before latency is compared; a
    # device with fewer (an idle one, say) is not judged on latency.
    min_samples: int = 3
    # How far before its deployment a device's samples count as its baseline, seconds.
    baseline_s: float = 600.0
    # A device that has not reported its deployment active or failed by then counts as
    # failed, seconds. Deployments to offline devices wait for them within this time.
    deploy_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        # Upper bounds catch a unit mistake (milliseconds for seconds) and values such
        # as 1e300 that would hold the rollout's devices until an operator aborts it.
        rate = self.max_failure_rate
        if not _is_number(rate) or not 0 <= rate < 1:
            raise InvalidRolloutError(
                f"gates.max_failure_rate must be a number from 0 up to (not including) 1, "
                f"got {rate!r}"
            )
        if not _is_number(self.max_p95_regression) or self.max_p95_regression < 0:
            raise InvalidRolloutError(
                f"gates.max_p95_regression must be a number >= 0, got {self.max_p95_regression!r}"
            )
        if not _is_number(self.soak_s) or not 0 <= self.soak_s <= MAX_SOAK_S:
            raise InvalidRolloutError(
                f"gates.soak_s must be a number from 0 to {MAX_SOAK_S:g} (a day), "
                f"got {self.soak_s!r}"
            )
        for name, limit, words in (
            ("baseline_s", MAX_BASELINE_S, "a day"),
            ("deploy_timeout_s", MAX_DEPLOY_TIMEOUT_S, "a week"),
        ):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value <= limit:
                raise InvalidRolloutError(
                    f"gates.{name} must be a positive number of at most {limit:g} ({words}), "
                    f"got {value!r}"
                )
        samples = self.min_samples
        if (
            isinstance(samples, bool)
            or not isinstance(samples, int)
            or not 1 <= samples <= MAX_MIN_SAMPLES
        ):
            raise InvalidRolloutError(
                f"gates.min_samples must be an integer from 1 to {MAX_MIN_SAMPLES}, got {samples!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GateConfig:
        """Build gates from a mapping; raises ``InvalidRolloutError`` naming an unknown key."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRolloutError(
                f"unknown gate setting(s) {', '.join(unknown)}; "
                f"allowed are {', '.join(sorted(known))}"
            )
        return cls(**data)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
