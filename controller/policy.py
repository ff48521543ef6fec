"""The policy engine: pure decisions over a device's recent telemetry and its ladder.

``evaluate`` takes a device's state and its newest samples and returns a ``Decision``.
It reads no clock, database or network, so tests check the rules below over plain
sample sequences.

* **Latency breach**: the last ``breach_samples`` samples that served requests all have
  p95 latency over the profile's budget. Idle samples neither count nor break the run.
* **Memory pressure**: the last ``breach_samples`` samples all have less memory
  available than the current variant's peak memory plus ``memory_margin_mb``: the device
  could not load that model again, for example after a restart or during a swap.
* A breach steps the device one rung down its ladder, or asks for a recompression
  (``RECOMPRESS``) when it is on the last rung.
* **Headroom**: the last ``headroom_samples`` serving samples all have p95 latency at most
  ``headroom_ratio`` times the budget, and with the next rung up loaded, available memory
  would still cover that rung's need plus the margin. Then the device steps one rung up.
* Only samples of the device's current variant received after its last action count,
  no action is taken within ``cooldown_s`` of the last one or while a deployment is in
  flight, and pinned devices are never moved. Together these stop flapping.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from edgefleet.controller.errors import ConfigError
from edgefleet.controller.telemetry import TelemetryRecord

__all__ = ["Decision", "DeviceView", "PolicyAction", "PolicyConfig", "Rung", "evaluate"]


class PolicyAction(StrEnum):
    """Action the policy requests for a device."""

    NONE = "none"
    STEP_DOWN = "step_down"  # deploy the next, cheaper rung of the ladder
    STEP_UP = "step_up"  # deploy the previous, more accurate rung
    RECOMPRESS = "recompress"  # the ladder ran out: plan tighter variants, then step down


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Thresholds of the policy engine; the ``[policy]`` table of the controller config."""

    # Consecutive breaching samples (serving ones, for latency) that trigger a step down.
    breach_samples: int = 3
    # Memory available below this, in MiB, is memory pressure.
    memory_margin_mb: float = 64.0
    # p95 at most this fraction of the budget counts as headroom.
    headroom_ratio: float = 0.5
    # Consecutive serving samples with headroom before a step up.
    headroom_samples: int = 30
    # Seconds after any action during which the policy takes no other.
    cooldown_s: float = 20.0
    # A sample that served fewer requests has no meaningful latency percentiles.
    min_requests: int = 1

    def __post_init__(self) -> None:
        for name in ("breach_samples", "headroom_samples", "min_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"policy.{name} must be an integer >= 1, got {value!r}")
        for name in ("memory_margin_mb", "cooldown_s"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"policy.{name} must be a finite number >= 0, got {value!r}")
        ratio = self.headroom_ratio
        if not _is_number(ratio) or not 0 < ratio < 1:
            raise ConfigError(
                f"policy.headroom_ratio must be a number between 0 and 1 (exclusive), got {ratio!r}"
            )

    @property
    def window(self) -> int:
        """Return how many of a device's newest samples ``evaluate`` may need."""
        return max(self.breach_samples, self.headroom_samples)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PolicyConfig:
        """Build a config from the ``[policy]`` table; raises ``ConfigError`` naming the key."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s) in [policy]: {', '.join(unknown)}; "
                f"allowed keys are {', '.join(sorted(known))}"
            )
        return cls(**data)


@dataclasses.dataclass(frozen=True, slots=True)
class Rung:
    """One ladder variant, with the figures the policy compares."""

    variant_id: str
    host_latency_p95_ms: float
    peak_memory_mb: float


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceView:
    """Device state the policy needs besides telemetry: budget, ladder and blockers."""

    device_id: str
    latency_budget_ms: float
    current_variant_id: str | None
    # Most accurate rung first.
    ladder: tuple[Rung, ...]
    last_action_at: datetime | None = None
    deployment_in_flight: bool = False
    recompress_in_flight: bool = False
    pinned: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The policy's verdict for a device, with the samples behind it."""

    action: PolicyAction
    reason: str
    target_variant_id: str | None = None
    evidence: tuple[TelemetryRecord, ...] = ()
    # A breach that the policy cannot act on now (pinned device, recompression running).
    alert: bool = False


def evaluate(
    config: PolicyConfig,
    device: DeviceView,
    samples: Sequence[TelemetryRecord],
    *,
    now: datetime,
) -> Decision:
    """Decide what to do with ``device`` given its samples, oldest first."""
    rungs = [rung.variant_id for rung in device.ladder]
    if device.current_variant_id is None or device.current_variant_id not in rungs:
        return Decision(PolicyAction.NONE, "the current variant is not on the ladder")
    index = rungs.index(device.current_variant_id)
    relevant = [
        sample
        for sample in samples
        if sample.variant_id == device.current_variant_id
        and (device.last_action_at is None or sample.received_at > device.last_action_at)
    ]

    breach = _find_breach(config, device, relevant)
    if breach is not None:
        return _act_on_breach(config, device, index, breach, now=now)
    return _check_headroom(config, device, index, relevant, now=now)


def _find_breach(
    config: PolicyConfig, device: DeviceView, samples: list[TelemetryRecord]
) -> Decision | None:
    count = config.breach_samples
    tail = samples[-count:]
    need_mb = next(
        (
            rung.peak_memory_mb
            for rung in device.ladder
            if rung.variant_id == device.current_variant_id
        ),
        0.0,
    )
    floor_mb = need_mb + config.memory_margin_mb
    if len(tail) == count and all(s.memory_available_mb < floor_mb for s in tail):
        lowest = min(s.memory_available_mb for s in tail)
        reason = (
            f"memory pressure: {count} consecutive samples below the model's "
            f"{need_mb:g} MiB plus the {config.memory_margin_mb:g} MiB margin "
            f"(lowest {lowest:g} MiB available)"
        )
        return Decision(PolicyAction.NONE, reason, evidence=tuple(tail))

    serving = [s for s in samples if s.requests >= config.min_requests][-count:]
    budget = device.latency_budget_ms
    if len(serving) == count and all(s.latency_p95_ms > budget for s in serving):
        worst = max(s.latency_p95_ms for s in serving)
        reason = (
            f"latency breach: p95 over the {budget:g} ms budget in {count} consecutive "
            f"serving samples (worst {worst:g} ms)"
        )
        return Decision(PolicyAction.NONE, reason, evidence=tuple(serving))
    return None


def _act_on_breach(
    config: PolicyConfig, device: DeviceView, index: int, breach: Decision, *, now: datetime
) -> Decision:
    blocked = _blocked_reason(config, device, now=now)
    if blocked is not None:
        # Pinned devices raise an alert; a cooldown or a deployment in flight is expected
        # to resolve the breach, so it is not one.
        return dataclasses.replace(
            breach, reason=f"{breach.reason}; no action: {blocked}", alert=device.pinned
        )
    if index + 1 < len(device.ladder):
        return dataclasses.replace(
            breach,
            action=PolicyAction.STEP_DOWN,
            target_variant_id=device.ladder[index + 1].variant_id,
        )
    if device.recompress_in_flight:
        return dataclasses.replace(
            breach,
            reason=f"{breach.reason}; ladder exhausted and a recompression is running",
            alert=True,
        )
    return dataclasses.replace(
        breach, action=PolicyAction.RECOMPRESS, reason=f"{breach.reason}; ladder exhausted"
    )


def _check_headroom(
    config: PolicyConfig,
    device: DeviceView,
    index: int,
    samples: list[TelemetryRecord],
    *,
    now: datetime,
) -> Decision:
    if index == 0:
        return Decision(PolicyAction.NONE, "on the most accurate rung, within budget")
    count = config.headroom_samples
    serving = [s for s in samples if s.requests >= config.min_requests][-count:]
    limit = config.headroom_ratio * device.latency_budget_ms
    if len(serving) < count or any(s.latency_p95_ms > limit for s in serving):
        return Decision(PolicyAction.NONE, "within budget, without sustained headroom")

    # After the step up, available memory shrinks by the difference between the rungs and
    # must still cover the new model's need plus the margin, or the step would be undone.
    upper, current = device.ladder[index - 1], device.ladder[index]
    extra_mb = max(upper.peak_memory_mb - current.peak_memory_mb, 0.0)
    lowest_available = min(s.memory_available_mb for s in serving)
    if lowest_available - extra_mb < upper.peak_memory_mb + config.memory_margin_mb:
        return Decision(PolicyAction.NONE, "latency headroom, but not enough memory to step up")
    if _blocked_reason(config, device, now=now) is not None:
        return Decision(PolicyAction.NONE, "headroom, but stepping up is blocked for now")
    worst = max(s.latency_p95_ms for s in serving)
    return Decision(
        PolicyAction.STEP_UP,
        f"sustained headroom: p95 at most {worst:g} ms (limit {limit:g} ms) in {count} "
        f"consecutive serving samples",
        target_variant_id=device.ladder[index - 1].variant_id,
        evidence=tuple(serving),
    )


def _blocked_reason(config: PolicyConfig, device: DeviceView, *, now: datetime) -> str | None:
    if device.pinned:
        return "the device is pinned"
    if device.deployment_in_flight:
        return "a deployment is in flight"
    if device.last_action_at is not None:
        elapsed = (now - device.last_action_at).total_seconds()
        if elapsed < config.cooldown_s:
            return f"in cooldown ({elapsed:.1f} s of {config.cooldown_s:g} s since last action)"
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
