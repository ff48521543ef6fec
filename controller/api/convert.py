"""Conversions between registry rows and API schemas, and parsing of query values."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from edgefleet.controller.api.errors import ApiError
from edgefleet.controller.api.queries import TelemetryBucket
from edgefleet.controller.api.schemas import (
    Deployment,
    Device,
    Event,
    TelemetryPoint,
    TelemetrySample,
    Variant,
)
from edgefleet.controller.models import DeploymentRow, DeviceRow, DeviceState, EventRow, VariantRow
from edgefleet.controller.policy import PolicyConfig
from edgefleet.controller.telemetry import TelemetryRecord

__all__ = [
    "deployment_schema",
    "device_schema",
    "event_schema",
    "is_within_budget",
    "pareto_front",
    "parse_time",
    "peak_memory_by_variant",
    "point_schema",
    "sample_schema",
    "variant_schema",
]


def parse_time(value: str | None, *, name: str) -> datetime | None:
    """Parse a query time: ISO 8601 with a UTC offset (``Z`` counts), or Unix seconds.

    Raises ``ApiError`` (400) naming the parameter, the value and the accepted forms.
    """
    if value is None or value == "":
        return None
    accepted = "use ISO 8601 with an offset (2026-01-31T12:00:00Z) or Unix seconds"
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds):
            raise ApiError(
                400, "invalid_input", f"{name}={value!r} is not a time; {accepted}", field=name
            )
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise ApiError(
                400, "invalid_input", f"{name}={value!r} is out of range; {accepted}", field=name
            ) from None
    try:
        parsed = datetime.fromisoformat(_restore_plus(value))
    except ValueError:
        raise ApiError(
            400, "invalid_input", f"{name}={value!r} is not a time; {accepted}", field=name
        ) from None
    if parsed.tzinfo is None:
        raise ApiError(
            400,
            "invalid_input",
            f"{name}={value!r} has no UTC offset, so its time zone is ambiguous; "
            f"append Z for UTC or an offset such as +02:00",
            field=name,
        )
    return parsed.astimezone(UTC)


def _restore_plus(value: str) -> str:
    # A "+02:00" offset sent without URL encoding arrives as " 02:00", because a query
    # string decodes "+" as a space. No valid ISO 8601 time contains that space.
    head, separator, offset = value.rpartition(" ")
    if separator and len(offset) == 5 and offset[2] == ":" and "T" in head:
        return f"{head}+{offset}"
    return value


def is_within_budget(
    device: DeviceRow,
    sample: TelemetryRecord | None,
    *,
    policy: PolicyConfig,
    peak_memory_mb: float,
) -> bool | None:
    """Judge the newest sample the way the policy judges a breach, or None without one.

    The latency is judged only when the sample served at least ``policy.min_requests``
    requests. Memory is short when less is available than the served variant's peak
    memory plus the policy's margin. A device that serves no model is not within budget,
    whatever its figures, because it serves no requests.
    """
    if sample is None:
        return None
    if not sample.variant_id:
        return False
    budget_ms = float(device.profile["latency_budget_ms"])
    serving = sample.requests >= policy.min_requests
    latency_ok = not serving or sample.latency_p95_ms <= budget_ms
    memory_ok = sample.memory_available_mb >= peak_memory_mb + policy.memory_margin_mb
    return latency_ok and memory_ok


def device_schema(
    device: DeviceRow,
    sample: TelemetryRecord | None,
    *,
    within_budget: bool | None,
    dropped_samples: int,
) -> Device:
    profile = device.profile
    return Device(
        device_id=device.device_id,
        profile_name=str(profile.get("name", "")),
        profile_fingerprint=device.profile_fingerprint,
        profile=profile,
        state=device.state.value,
        online=device.state is DeviceState.ONLINE,
        current_variant_id=device.current_variant_id,
        desired_variant_id=device.desired_variant_id,
        pinned=device.pinned,
        latency_budget_ms=float(profile["latency_budget_ms"]),
        model_memory_budget_mb=float(profile["model_memory_budget_mb"]),
        within_budget=within_budget,
        latency_scale=device.latency_scale,
        agent_version=device.agent_version,
        onnxruntime_version=device.onnxruntime_version,
        registered_at=device.registered_at,
        last_seen=device.last_seen,
        last_telemetry=sample_schema(sample) if sample is not None else None,
        dropped_samples=dropped_samples,
    )


def sample_schema(record: TelemetryRecord) -> TelemetrySample:
    fields = {name: getattr(record, name) for name in TelemetrySample.model_fields}
    return TelemetrySample(**fields)


def point_schema(bucket: TelemetryBucket) -> TelemetryPoint:
    fields = {name: getattr(bucket, name) for name in TelemetryPoint.model_fields}
    return TelemetryPoint(**fields)


def pareto_front(variants: Iterable[VariantRow]) -> list[VariantRow]:
    """Return the variants no other beats on both accuracy and latency, fastest first.

    Latency is the profile's predicted p95; ties on latency keep the more accurate one.
    """
    ordered = sorted(variants, key=lambda row: (row.latency_p95_ms, -row.accuracy))
    front: list[VariantRow] = []
    best_accuracy = -math.inf
    for row in ordered:
        if row.accuracy > best_accuracy:
            front.append(row)
            best_accuracy = row.accuracy
    return front


def variant_schema(row: VariantRow, *, on_front: bool) -> Variant:
    try:
        recipe = json.loads(row.recipe_json)
    except ValueError:
        recipe = [row.recipe_json]
    if not isinstance(recipe, list):
        recipe = [recipe]
    return Variant(
        variant_id=row.variant_id,
        model_id=row.model_id,
        profile_fingerprint=row.profile_fingerprint,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        accuracy=row.accuracy,
        latency_p95_ms=row.latency_p95_ms,
        host_latency_p95_ms=row.host_latency_p95_ms,
        peak_memory_mb=row.peak_memory_mb,
        ladder_rank=row.ladder_rank,
        on_pareto_front=on_front,
        recipe=recipe,
        created_at=row.created_at,
    )


def deployment_schema(row: DeploymentRow) -> Deployment:
    return Deployment(
        deployment_id=row.id,
        device_id=row.device_id,
        variant_id=row.variant_id,
        previous_variant_id=row.previous_variant_id,
        state=row.state.value,
        reason=row.reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def event_schema(row: EventRow) -> Event:
    return Event(
        id=row.id,
        at=row.at,
        kind=row.kind.value,
        device_id=row.device_id,
        reason=row.reason,
        from_variant=row.from_variant,
        to_variant=row.to_variant,
        details=dict(row.details or {}),
    )


def peak_memory_by_variant(rows: Iterable[VariantRow]) -> Mapping[tuple[str, str], float]:
    """Return each variant's peak memory keyed by (profile fingerprint, variant id)."""
    return {(row.profile_fingerprint, row.variant_id): row.peak_memory_mb for row in rows}
