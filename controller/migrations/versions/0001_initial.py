"""Create the registry tables.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Enum columns are plain VARCHAR holding the enum's value (see edgefleet.controller.models).
_ENUM = sa.String(32)


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("weights_path", sa.Text(), nullable=True),
        sa.Column("data_path", sa.Text(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("registered_at", _timestamp(), nullable=False),
    )
    op.create_table(
        "plans",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "model_id",
            sa.String(32),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "profile_fingerprint",
            sa.String(64),
            sa.ForeignKey("profiles.fingerprint", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("state", _ENUM, nullable=False),
        sa.Column("latency_scale", sa.Double(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.UniqueConstraint("model_id", "profile_fingerprint", "generation"),
    )
    op.create_table(
        "variants",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("variant_id", sa.String(64), nullable=False),
        sa.Column(
            "model_id",
            sa.String(32),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "profile_fingerprint",
            sa.String(64),
            sa.ForeignKey("profiles.fingerprint", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "plan_id",
            sa.Integer(),
            sa.ForeignKey("plans.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("recipe_json", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("accuracy", sa.Double(), nullable=False),
        sa.Column("latency_p95_ms", sa.Double(), nullable=False),
        sa.Column("host_latency_p95_ms", sa.Double(), nullable=False),
        sa.Column("peak_memory_mb", sa.Double(), nullable=False),
        sa.Column("ladder_rank", sa.Integer(), nullable=True),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.UniqueConstraint("model_id", "profile_fingerprint", "variant_id"),
    )
    op.create_index(
        "ix_variants_ladder", "variants", ["model_id", "profile_fingerprint", "ladder_rank"]
    )
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column(
            "profile_fingerprint",
            sa.String(64),
            sa.ForeignKey("profiles.fingerprint"),
            nullable=False,
        ),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("calibration", sa.JSON(), nullable=True),
        sa.Column("latency_scale", sa.Double(), nullable=True),
        sa.Column("state", _ENUM, nullable=False),
        sa.Column("current_variant_id", sa.String(64), nullable=True),
        sa.Column("desired_variant_id", sa.String(64), nullable=True),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("onnxruntime_version", sa.String(32), nullable=False),
        sa.Column("registered_at", _timestamp(), nullable=False),
        sa.Column("last_seen", _timestamp(), nullable=True),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "device_id",
            sa.String(64),
            sa.ForeignKey("devices.device_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("variant_id", sa.String(64), nullable=False),
        sa.Column("previous_variant_id", sa.String(64), nullable=True),
        sa.Column("state", _ENUM, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
    )
    op.create_index("ix_deployments_device", "deployments", ["device_id", "created_at"])
    op.create_table(
        "telemetry",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "device_id",
            sa.String(64),
            sa.ForeignKey("devices.device_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("sampled_at", _timestamp(), nullable=False),
        sa.Column("received_at", _timestamp(), nullable=False),
        sa.Column("variant_id", sa.String(64), nullable=False),
        sa.Column("cpu_percent", sa.Double(), nullable=False),
        sa.Column("memory_total_mb", sa.Double(), nullable=False),
        sa.Column("memory_available_mb", sa.Double(), nullable=False),
        sa.Column("load_1m", sa.Double(), nullable=False),
        sa.Column("load_5m", sa.Double(), nullable=False),
        sa.Column("load_15m", sa.Double(), nullable=False),
        sa.Column("disk_free_mb", sa.Double(), nullable=False),
        sa.Column("temperature_c", sa.Double(), nullable=True),
        sa.Column("agent_rss_mb", sa.Double(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("latency_p50_ms", sa.Double(), nullable=False),
        sa.Column("latency_p95_ms", sa.Double(), nullable=False),
        sa.Column("latency_p99_ms", sa.Double(), nullable=False),
        sa.Column("throughput_rps", sa.Double(), nullable=False),
        sa.Column("window_s", sa.Double(), nullable=False),
    )
    op.create_index("ix_telemetry_device_received", "telemetry", ["device_id", "received_at"])
    op.create_index("ix_telemetry_received", "telemetry", ["received_at"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", _timestamp(), nullable=False),
        sa.Column("kind", _ENUM, nullable=False),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("from_variant", sa.String(64), nullable=True),
        sa.Column("to_variant", sa.String(64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_events_device_at", "events", ["device_id", "at"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("telemetry")
    op.drop_table("deployments")
    op.drop_table("devices")
    op.drop_table("variants")
    op.drop_table("plans")
    op.drop_table("models")
    op.drop_table("profiles")
