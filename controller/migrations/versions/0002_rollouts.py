"""Add staged rollouts: rollouts, their waves and their devices.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Enum columns are plain VARCHAR holding the enum's value (see edgefleet.controller.models).
_ENUM = sa.String(32)


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "model_id",
            sa.String(32),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("state", _ENUM, nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.Column("finished_at", _timestamp(), nullable=True),
    )
    op.create_table(
        "rollout_waves",
        sa.Column(
            "rollout_id",
            sa.String(32),
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("index", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("spec", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", _ENUM, nullable=False),
        sa.Column("started_at", _timestamp(), nullable=True),
        sa.Column("soak_started_at", _timestamp(), nullable=True),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
    )
    op.create_table(
        "rollout_devices",
        sa.Column(
            "rollout_id",
            sa.String(32),
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", _ENUM, nullable=False),
        sa.Column("variant_id", sa.String(64), nullable=False),
        sa.Column("previous_variant_id", sa.String(64), nullable=True),
        sa.Column("previous_model_id", sa.String(32), nullable=True),
        sa.Column("deployment_id", sa.String(32), nullable=True),
        sa.Column("revert_deployment_id", sa.String(32), nullable=True),
        sa.Column("deployed_at", _timestamp(), nullable=True),
        sa.Column("active_at", _timestamp(), nullable=True),
        sa.Column("baseline_p95_ms", sa.Double(), nullable=True),
        sa.Column("soak_p95_ms", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
    )
    op.create_index("ix_rollout_devices_device", "rollout_devices", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_devices_device", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    op.drop_table("rollout_waves")
    op.drop_table("rollouts")
