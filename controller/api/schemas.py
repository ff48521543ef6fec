"""Request and response bodies of the HTTP API, as pydantic models.

The OpenAPI document is generated from these classes, so a field's ``description`` is
its documentation. Times are timezone-aware UTC datetimes, serialized as ISO 8601.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DeployRequest",
    "Deployment",
    "DeploymentList",
    "Device",
    "DeviceLadder",
    "DeviceList",
    "ErrorBody",
    "ErrorResponse",
    "Event",
    "EventList",
    "Health",
    "Model",
    "ModelList",
    "ModelVariants",
    "PinRequest",
    "ProfileVariants",
    "Rollout",
    "RolloutActionRequest",
    "RolloutDevice",
    "RolloutList",
    "RolloutRequest",
    "RolloutWave",
    "StartedRollout",
    "TelemetryHistory",
    "TelemetryPoint",
    "TelemetrySample",
    "Variant",
]


class _Body(BaseModel):
    # Unknown fields in a request body are errors, so a misspelt field is not ignored.
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code, e.g. device_not_found.")
    message: str = Field(description="What failed, on which value, and how to fix it.")
    field: str | None = Field(
        default=None, description="The request field or parameter that was rejected."
    )


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str = Field(description="ok while the controller runs and reaches its database.")
    controller_state: str
    version: str


class TelemetrySample(BaseModel):
    """One stored telemetry sample, as the agent reported it."""

    seq: int
    sampled_at: datetime
    received_at: datetime
    variant_id: str
    cpu_percent: float
    memory_total_mb: float
    memory_available_mb: float
    load_1m: float
    load_5m: float
    load_15m: float
    disk_free_mb: float
    temperature_c: float | None
    agent_rss_mb: float
    requests: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    throughput_rps: float
    window_s: float
    dropped_samples: int = Field(
        description="Samples the agent's offline backlog had to drop when it was full, "
        "counted since the backlog was created."
    )


class Device(BaseModel):
    device_id: str
    profile_name: str
    profile_fingerprint: str
    profile: dict[str, Any] = Field(description="The declared device profile.")
    state: str = Field(description="online or offline.")
    online: bool
    current_variant_id: str | None = Field(description="The variant the device serves.")
    desired_variant_id: str | None = Field(description="The variant the controller targets.")
    pinned: bool = Field(description="A pinned device is never moved by the policy engine.")
    latency_budget_ms: float
    model_memory_budget_mb: float
    within_budget: bool | None = Field(
        description="Whether the newest sample is within budget as the policy judges it: "
        "p95 latency within the budget when the sample served requests, and more memory "
        "available than the served variant's peak plus the policy's margin. Null before "
        "the first sample."
    )
    latency_scale: float | None = Field(
        description="Device p50 over host p50 on the reference model; null until measured."
    )
    agent_version: str
    onnxruntime_version: str
    registered_at: datetime
    last_seen: datetime | None
    last_telemetry: TelemetrySample | None
    dropped_samples: int = Field(
        description="Invalid telemetry samples from this device dropped since the "
        "controller started."
    )


class DeviceList(BaseModel):
    devices: list[Device]


class TelemetryPoint(BaseModel):
    """Samples of one time bucket, aggregated in SQL (one sample a point without ``step``)."""

    at: datetime = Field(description="Start of the bucket (the sample's time without step).")
    samples: int = Field(description="How many samples the bucket aggregates.")
    cpu_percent: float
    memory_available_mb: float
    memory_total_mb: float
    temperature_c: float | None
    agent_rss_mb: float
    requests: int = Field(description="Sum of inference requests in the bucket.")
    throughput_rps: float
    latency_p50_ms: float = Field(description="Mean of the samples' p50 latency.")
    latency_p95_ms: float = Field(description="Mean of the samples' p95 latency.")
    latency_p99_ms: float = Field(description="Mean of the samples' p99 latency.")
    latency_p95_max_ms: float = Field(description="Highest p95 latency in the bucket.")


class TelemetryHistory(BaseModel):
    device_id: str
    since: datetime | None
    until: datetime | None
    step_s: int | None = Field(description="Bucket width in seconds; null for raw samples.")
    points: list[TelemetryPoint] = Field(description="Oldest first, by received time.")
    truncated: bool = Field(
        description="More points fall in the range than limit; the newest ones are returned."
    )


class Variant(BaseModel):
    variant_id: str
    model_id: str
    profile_fingerprint: str
    sha256: str
    size_bytes: int
    accuracy: float
    latency_p95_ms: float = Field(description="p95 latency predicted for the profile.")
    host_latency_p95_ms: float = Field(description="p95 latency measured on the host.")
    peak_memory_mb: float
    ladder_rank: int | None = Field(description="0 = most accurate rung; null = off the ladder.")
    on_pareto_front: bool = Field(
        description="No other variant of this profile is both more accurate and faster."
    )
    recipe: list[Any] = Field(description="The compression steps that produced the variant.")
    created_at: datetime


class DeviceLadder(BaseModel):
    device_id: str
    model_id: str | None
    ladder: list[Variant]


class ProfileVariants(BaseModel):
    profile_fingerprint: str
    profile_name: str
    variants: list[Variant] = Field(description="Every stored variant, most accurate first.")
    pareto_front: list[str] = Field(description="Variant ids on the front, fastest first.")
    ladder: list[str] = Field(description="Variant ids of the ladder, most accurate first.")


class ModelVariants(BaseModel):
    model_id: str
    profiles: list[ProfileVariants]


class Model(BaseModel):
    model_id: str
    name: str
    digest: str
    source: str
    active: bool
    created_at: datetime
    registered_at: datetime
    plans: dict[str, str] = Field(
        description="State of the newest plan per profile fingerprint (pending, running, "
        "done or failed)."
    )


class ModelList(BaseModel):
    active_model_id: str | None
    models: list[Model]


class Deployment(BaseModel):
    deployment_id: str
    device_id: str
    variant_id: str
    previous_variant_id: str | None
    state: str = Field(
        description="pending, downloading, verifying, loading, active, failed, "
        "rolled_back or superseded."
    )
    reason: str
    created_at: datetime
    updated_at: datetime


class DeploymentList(BaseModel):
    deployments: list[Deployment]


class DeployRequest(_Body):
    variant_id: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="requested through the HTTP API", max_length=500)


class PinRequest(_Body):
    variant_id: str | None = Field(
        default=None,
        max_length=64,
        description="Deploy this variant, then pin; without it the device is pinned to "
        "its current target.",
    )
    reason: str = Field(default="pinned through the HTTP API", max_length=500)


class Event(BaseModel):
    id: int
    at: datetime
    kind: str
    device_id: str | None
    reason: str
    from_variant: str | None
    to_variant: str | None
    details: dict[str, Any]


class EventList(BaseModel):
    events: list[Event]
    last_id: int | None = Field(
        description="Id of the newest event returned, or the after_id given when none "
        "was; pass it as after_id to follow."
    )


class RolloutRequest(_Body):
    model_id: str | None = Field(
        default=None, max_length=32, description="Model to roll out; null: the active model."
    )
    target: str = Field(
        default="all",
        max_length=10_000,
        description="Devices to cover: 'all', 'profile:NAME' or 'devices:ID,ID,...'.",
    )
    waves: list[str | int] | str | None = Field(
        default=None,
        description="Cumulative wave sizes, device counts or shares of the target, the last "
        "one 100%: ['1', '25%', '100%'] or '1,25%,100%'. Null uses 1, 25%, 100%.",
    )
    variants: dict[str, str] = Field(
        default_factory=dict,
        description="Variant id per profile name; other profiles get the starting rung of "
        "the model's ladder.",
    )
    gates: dict[str, float | int] = Field(
        default_factory=dict,
        description="Health gate settings: max_failure_rate, max_p95_regression, soak_s, "
        "min_samples, baseline_s, deploy_timeout_s.",
    )
    online_only: bool = Field(
        default=False,
        description="Leave out the target devices that are offline now. Otherwise an offline "
        "device that does not report within gates.deploy_timeout_s fails its wave.",
    )


class RolloutActionRequest(_Body):
    reason: str = Field(default="", max_length=500, description="Recorded in the event.")


class RolloutDevice(BaseModel):
    device_id: str
    wave: int
    state: str = Field(
        description="pending, deploying, updated, unchanged, failed, reverting, reverted, "
        "revert_failed or skipped."
    )
    variant_id: str
    previous_variant_id: str | None
    deployment_id: str | None
    revert_deployment_id: str | None
    baseline_p95_ms: float | None
    soak_p95_ms: float | None
    reason: str
    updated_at: datetime


class RolloutWave(BaseModel):
    index: int
    spec: str = Field(description="The wave as requested: a device count or a share, '25%'.")
    size: int = Field(description="Devices this wave adds.")
    state: str = Field(description="pending, deploying, soaking, passed, failed or cancelled.")
    device_ids: list[str]
    started_at: datetime | None
    soak_started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] = Field(description="The health gate's figures and verdict.")


class Rollout(BaseModel):
    rollout_id: str
    model_id: str
    state: str = Field(description="running, paused, succeeded, halted or aborted.")
    target: dict[str, Any]
    gates: dict[str, Any]
    variants: dict[str, str]
    current_wave: int
    reason: str
    settled: bool = Field(description="No deployment or revert of the rollout is in flight.")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    waves: list[RolloutWave]
    devices: list[RolloutDevice]


class StartedRollout(Rollout):
    offline_device_ids: list[str] = Field(
        description="Target devices in the rollout that were offline when it started; each "
        "fails its wave unless it reports within gates.deploy_timeout_s."
    )
    left_out_device_ids: list[str] = Field(
        description="Offline target devices that online_only left out of the rollout."
    )


class RolloutList(BaseModel):
    rollouts: list[Rollout]
