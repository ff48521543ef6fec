"""Registry tables as SQLAlchemy 2 typed ORM classes, and the enums of their lifecycles.

The schema is versioned: ``controller/migrations/versions`` creates and alters these
tables, and a test checks that this module and the migrated schema never drift apart. A
change here therefore needs a new migration.

Timestamps are timezone-aware UTC ``datetime`` values. Enums are stored as their string
values in ``VARCHAR`` columns (not native database enums), so adding a member needs no
``ALTER TYPE`` on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from edgefleet.protos.v1 import fleet_pb2

__all__ = [
    "ApiTokenRole",
    "ApiTokenRow",
    "Base",
    "DeploymentRow",
    "DeploymentState",
    "DeviceCertificateRow",
    "DeviceRow",
    "DeviceState",
    "EnrollmentTokenRow",
    "EventKind",
    "EventRow",
    "ModelRow",
    "PlanRow",
    "PlanState",
    "ProfileRow",
    "RolloutDeviceRow",
    "RolloutDeviceState",
    "RolloutRow",
    "RolloutState",
    "RolloutWaveRow",
    "TelemetryRow",
    "VariantRow",
    "WaveState",
    "utc_now",
]


def utc_now() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A ``DateTime`` that stores UTC and always returns timezone-aware values.

    SQLite keeps no time zone, so values read back are naive; this type reattaches UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the registry stores only aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class DeviceState(StrEnum):
    """Connection state of a device: online while its session stream is open."""

    ONLINE = "online"
    OFFLINE = "offline"


class DeploymentState(StrEnum):
    """Lifecycle of one deployment, mirroring ``edgefleet.v1.DeploymentState``."""

    PENDING = "pending"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    LOADING = "loading"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    # Controller-only: a newer deployment to the same device replaced this one before it
    # finished. The protocol has no counterpart because the agent never reports it.
    SUPERSEDED = "superseded"

    @classmethod
    def from_proto(cls, value: int) -> DeploymentState:
        """Map a ``fleet_pb2.DeploymentState`` value; raises ``ValueError`` for UNSPECIFIED."""
        try:
            return _PROTO_TO_DEPLOYMENT_STATE[value]
        except KeyError:
            raise ValueError(f"invalid deployment state enum value {value}") from None

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_DEPLOYMENT_STATES


_PROTO_TO_DEPLOYMENT_STATE = {
    fleet_pb2.DEPLOYMENT_STATE_PENDING: DeploymentState.PENDING,
    fleet_pb2.DEPLOYMENT_STATE_DOWNLOADING: DeploymentState.DOWNLOADING,
    fleet_pb2.DEPLOYMENT_STATE_VERIFYING: DeploymentState.VERIFYING,
    fleet_pb2.DEPLOYMENT_STATE_LOADING: DeploymentState.LOADING,
    fleet_pb2.DEPLOYMENT_STATE_ACTIVE: DeploymentState.ACTIVE,
    fleet_pb2.DEPLOYMENT_STATE_FAILED: DeploymentState.FAILED,
    fleet_pb2.DEPLOYMENT_STATE_ROLLED_BACK: DeploymentState.ROLLED_BACK,
}
_TERMINAL_DEPLOYMENT_STATES = frozenset(
    {
        DeploymentState.ACTIVE,
        DeploymentState.FAILED,
        DeploymentState.ROLLED_BACK,
        DeploymentState.SUPERSEDED,
    }
)


class PlanState(StrEnum):
    """Lifecycle of compressing one model for one profile."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class EventKind(StrEnum):
    """Kind of an audit event."""

    REGISTERED = "registered"  # a device registered or refreshed its profile
    CONNECTED = "connected"  # a device opened a session stream
    DISCONNECTED = "disconnected"  # a device's session stream ended
    MODEL_REGISTERED = "model_registered"
    PLANNED = "planned"  # a plan finished and stored a ladder
    PLAN_FAILED = "plan_failed"
    DEPLOY_REQUESTED = "deploy_requested"  # a deployment was recorded and sent or queued
    DEPLOYED = "deployed"  # the device reported the deployment ACTIVE
    DEPLOY_FAILED = "deploy_failed"
    ROLLED_BACK = "rolled_back"
    ALERT = "alert"  # the policy saw a breach but took no action (e.g. in cooldown)
    STEPPED_DOWN = "stepped_down"
    STEPPED_UP = "stepped_up"
    RECOMPRESSED = "recompressed"  # the ladder ran out and a tighter plan was started
    ROLLOUT_STARTED = "rollout_started"
    ROLLOUT_WAVE_STARTED = "rollout_wave_started"
    ROLLOUT_WAVE_PASSED = "rollout_wave_passed"
    ROLLOUT_PAUSED = "rollout_paused"
    ROLLOUT_RESUMED = "rollout_resumed"
    ROLLOUT_HALTED = "rollout_halted"  # a wave failed its health gate
    ROLLOUT_ABORTED = "rollout_aborted"  # an operator aborted the rollout
    ROLLOUT_SUCCEEDED = "rollout_succeeded"
    ROLLOUT_REVERT = "rollout_revert"  # a device is sent back to its previous variant
    ENROLLED = "enrolled"  # a device exchanged an enrollment token for a certificate
    REVOKED = "revoked"  # an operator revoked a device's certificates
    # A connection, request or enrollment was rejected for lack of a valid identity.
    ACCESS_DENIED = "access_denied"


class RolloutState(StrEnum):
    """Lifecycle of a rollout: running or paused, then succeeded, halted or aborted."""

    RUNNING = "running"
    PAUSED = "paused"  # no new deployments start; those in flight finish
    SUCCEEDED = "succeeded"
    HALTED = "halted"  # a wave failed its health gate; updated devices are reverted
    ABORTED = "aborted"  # an operator aborted it; updated devices are reverted

    @property
    def is_terminal(self) -> bool:
        return self in (RolloutState.SUCCEEDED, RolloutState.HALTED, RolloutState.ABORTED)


class WaveState(StrEnum):
    """Lifecycle of one wave of a rollout."""

    PENDING = "pending"
    DEPLOYING = "deploying"  # deployments sent, waiting for the devices' reports
    SOAKING = "soaking"  # every device reported; telemetry is gathered for the latency gate
    PASSED = "passed"
    FAILED = "failed"  # the health gate failed and halted the rollout
    CANCELLED = "cancelled"  # the rollout ended before this wave finished


class RolloutDeviceState(StrEnum):
    """Progress of one device in a rollout."""

    PENDING = "pending"  # its wave has not started
    DEPLOYING = "deploying"
    UPDATED = "updated"  # serving the rollout's variant
    UNCHANGED = "unchanged"  # already served the rollout's variant; nothing was sent
    FAILED = "failed"  # the deployment failed or timed out; the agent kept its variant
    REVERTING = "reverting"  # the previous variant was sent back
    REVERTED = "reverted"  # serving its previous variant again
    REVERT_FAILED = "revert_failed"  # the previous variant could not be restored
    SKIPPED = "skipped"  # the rollout ended before its wave started

    @property
    def is_settled(self) -> bool:
        """Whether no deployment of the rollout is in flight to this device."""
        return self not in (RolloutDeviceState.DEPLOYING, RolloutDeviceState.REVERTING)


class ApiTokenRole(StrEnum):
    """Permission level of an HTTP API token."""

    READ = "read"  # GET requests only
    OPERATOR = "operator"  # every request: register models, deploy, pin, drive rollouts


def _enum_column(enum: type[Enum]) -> sa.Enum:
    return sa.Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime, dict[str, Any]: sa.JSON}


class ProfileRow(Base):
    """A distinct device profile, keyed by its fingerprint; devices that share it share variants."""

    __tablename__ = "profiles"

    fingerprint: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    profile: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class ModelRow(Base):
    """A registered model with its evaluation data."""

    __tablename__ = "models"

    # The first 16 hex digits of ``digest``: registering the same files again is a no-op.
    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    # SHA-256 over the model source, weights and evaluation data.
    digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # An .onnx path or "path/to/file.py:factory".
    source: Mapped[str] = mapped_column(sa.Text)
    weights_path: Mapped[str | None] = mapped_column(sa.Text)
    data_path: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    # Updated on every registration; the most recently registered model is the active one.
    registered_at: Mapped[datetime] = mapped_column(default=utc_now)


class PlanRow(Base):
    """One compression run of a model for a profile; ``generation`` counts recompressions."""

    __tablename__ = "plans"
    __table_args__ = (sa.UniqueConstraint("model_id", "profile_fingerprint", "generation"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    profile_fingerprint: Mapped[str] = mapped_column(
        sa.ForeignKey("profiles.fingerprint", ondelete="CASCADE")
    )
    generation: Mapped[int] = mapped_column(default=0)
    state: Mapped[PlanState] = mapped_column(_enum_column(PlanState))
    latency_scale: Mapped[float]
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    report: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    finished_at: Mapped[datetime | None]


class VariantRow(Base):
    """A compressed variant of a model for one profile.

    The same ONNX file (the fp32 baseline, say) may serve several profiles, so a
    ``variant_id`` is unique only together with the model and profile.
    """

    __tablename__ = "variants"
    __table_args__ = (
        sa.UniqueConstraint("model_id", "profile_fingerprint", "variant_id"),
        sa.Index("ix_variants_ladder", "model_id", "profile_fingerprint", "ladder_rank"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    variant_id: Mapped[str] = mapped_column(sa.String(64))
    model_id: Mapped[str] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    profile_fingerprint: Mapped[str] = mapped_column(
        sa.ForeignKey("profiles.fingerprint", ondelete="CASCADE")
    )
    plan_id: Mapped[int | None] = mapped_column(sa.ForeignKey("plans.id", ondelete="SET NULL"))
    recipe_json: Mapped[str] = mapped_column(sa.Text)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    accuracy: Mapped[float]
    latency_p95_ms: Mapped[float]
    host_latency_p95_ms: Mapped[float]
    peak_memory_mb: Mapped[float]
    # Position on the profile's ladder, 0 = most accurate; None = not on the ladder.
    ladder_rank: Mapped[int | None]
    # Serialized edgefleet.v1.VariantManifest, sent unchanged in DeployCommand.
    manifest: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class DeviceRow(Base):
    """An enrolled device with its declared profile and measured calibration."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    profile_fingerprint: Mapped[str] = mapped_column(sa.ForeignKey("profiles.fingerprint"))
    profile: Mapped[dict[str, Any]]
    calibration: Mapped[dict[str, Any] | None]
    # device_p50 / host_p50 on the reference model; None until the host side is measured.
    latency_scale: Mapped[float | None]
    state: Mapped[DeviceState] = mapped_column(
        _enum_column(DeviceState), default=DeviceState.OFFLINE
    )
    current_variant_id: Mapped[str | None] = mapped_column(sa.String(64))
    desired_variant_id: Mapped[str | None] = mapped_column(sa.String(64))
    # A pinned device keeps its desired variant; the policy engine leaves it alone.
    pinned: Mapped[bool] = mapped_column(default=False)
    agent_version: Mapped[str] = mapped_column(sa.String(64), default="")
    onnxruntime_version: Mapped[str] = mapped_column(sa.String(32), default="")
    registered_at: Mapped[datetime] = mapped_column(default=utc_now)
    last_seen: Mapped[datetime | None]


class DeploymentRow(Base):
    """An instruction to run one variant on one device, and how far the device got."""

    __tablename__ = "deployments"
    __table_args__ = (sa.Index("ix_deployments_device", "device_id", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.device_id", ondelete="CASCADE"))
    variant_id: Mapped[str] = mapped_column(sa.String(64))
    previous_variant_id: Mapped[str | None] = mapped_column(sa.String(64))
    state: Mapped[DeploymentState] = mapped_column(_enum_column(DeploymentState))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)
    # Version in the signed manifest; grows with every deployment to the device.
    manifest_version: Mapped[int | None] = mapped_column(sa.BigInteger)
    # A deliberate return to an older manifest version, signed as such.
    rollback: Mapped[bool] = mapped_column(default=False)


class TelemetryRow(Base):
    """One validated telemetry sample; rows older than the retention period are deleted."""

    __tablename__ = "telemetry"
    __table_args__ = (
        sa.Index("ix_telemetry_device_received", "device_id", "received_at"),
        sa.Index("ix_telemetry_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.device_id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    sampled_at: Mapped[datetime]
    received_at: Mapped[datetime]
    variant_id: Mapped[str] = mapped_column(sa.String(64), default="")
    cpu_percent: Mapped[float]
    memory_total_mb: Mapped[float]
    memory_available_mb: Mapped[float]
    load_1m: Mapped[float]
    load_5m: Mapped[float]
    load_15m: Mapped[float]
    disk_free_mb: Mapped[float]
    temperature_c: Mapped[float | None]
    agent_rss_mb: Mapped[float]
    requests: Mapped[int] = mapped_column(sa.BigInteger)
    latency_p50_ms: Mapped[float]
    latency_p95_ms: Mapped[float]
    latency_p99_ms: Mapped[float]
    throughput_rps: Mapped[float]
    window_s: Mapped[float]
    # The agent's running count of samples its offline backlog had to drop.
    dropped_samples: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")


class EventRow(Base):
    """An audit event: what happened to a device and why, with the telemetry behind it."""

    __tablename__ = "events"
    __table_args__ = (sa.Index("ix_events_device_at", "device_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utc_now)
    kind: Mapped[EventKind] = mapped_column(_enum_column(EventKind))
    # Events outlive deleted devices, so this is not a foreign key.
    device_id: Mapped[str | None] = mapped_column(sa.String(64))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    from_variant: Mapped[str | None] = mapped_column(sa.String(64))
    to_variant: Mapped[str | None] = mapped_column(sa.String(64))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RolloutRow(Base):
    """A staged rollout of a model to a set of devices, in waves gated on health."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    state: Mapped[RolloutState] = mapped_column(_enum_column(RolloutState))
    # ``rollout_spec.Target.to_dict()``.
    target: Mapped[dict[str, Any]]
    # ``rollout_spec.GateConfig.to_dict()``.
    gates: Mapped[dict[str, Any]]
    # Variant id per profile name chosen by the operator; other profiles get the
    # starting rung of the model's ladder.
    variants: Mapped[dict[str, Any]]
    # Index of the wave in progress (or the last one, once the rollout ended).
    current_wave: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)
    finished_at: Mapped[datetime | None]


class RolloutWaveRow(Base):
    """One wave of a rollout and the result of its health gate."""

    __tablename__ = "rollout_waves"

    rollout_id: Mapped[str] = mapped_column(
        sa.ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    # The operator's wave, as ``Wave.describe()`` writes it: "1" or "25%".
    spec: Mapped[str] = mapped_column(sa.String(16))
    # Devices this wave adds.
    size: Mapped[int]
    state: Mapped[WaveState] = mapped_column(_enum_column(WaveState))
    started_at: Mapped[datetime | None]
    # When the last device of the wave reported; the soak runs from here.
    soak_started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The gate's figures and verdict.
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RolloutDeviceRow(Base):
    """One device of a rollout: its wave, target variant and progress."""

    __tablename__ = "rollout_devices"
    __table_args__ = (sa.Index("ix_rollout_devices_device", "device_id"),)

    rollout_id: Mapped[str] = mapped_column(
        sa.ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    # Not a foreign key, like events: the record outlives a deleted device.
    device_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    wave: Mapped[int]
    state: Mapped[RolloutDeviceState] = mapped_column(_enum_column(RolloutDeviceState))
    variant_id: Mapped[str] = mapped_column(sa.String(64))
    previous_variant_id: Mapped[str | None] = mapped_column(sa.String(64))
    # Model of the previous variant, needed to send it back.
    previous_model_id: Mapped[str | None] = mapped_column(sa.String(32))
    deployment_id: Mapped[str | None] = mapped_column(sa.String(32))
    revert_deployment_id: Mapped[str | None] = mapped_column(sa.String(32))
    deployed_at: Mapped[datetime | None]
    active_at: Mapped[datetime | None]
    # Median served p95 on the previous variant before, and on the new one during the soak.
    baseline_p95_ms: Mapped[float | None]
    soak_p95_ms: Mapped[float | None]
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)


class EnrollmentTokenRow(Base):
    """A one-time enrollment token; only the SHA-256 of its secret is stored."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(sa.String(64))
    # The only device id the token enrolls; None lets it enroll any one device.
    device_id: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by: Mapped[str | None] = mapped_column(sa.String(64))


class DeviceCertificateRow(Base):
    """A device certificate the controller's CA issued, and whether it was revoked."""

    __tablename__ = "device_certificates"
    __table_args__ = (sa.Index("ix_device_certificates_device", "device_id"),)

    serial: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    # Certificates outlive deleted devices (revocation must stick), so no foreign key.
    device_id: Mapped[str] = mapped_column(sa.String(64))
    fingerprint: Mapped[str] = mapped_column(sa.String(64), unique=True)
    issued_at: Mapped[datetime] = mapped_column(default=utc_now)
    not_after: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str] = mapped_column(sa.Text, default="")


class ApiTokenRow(Base):
    """A bearer token of the HTTP API; only the SHA-256 of its secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    role: Mapped[ApiTokenRole] = mapped_column(_enum_column(ApiTokenRole))
    secret_sha256: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    revoked_at: Mapped[datetime | None]
    # ApiTokenStore.authenticate writes it at most once a minute per token, so that
    # polling reads do not each turn into a write.
    last_used_at: Mapped[datetime | None]
