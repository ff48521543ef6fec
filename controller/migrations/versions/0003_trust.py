"""Add enrollment tokens, device certificates and signed manifest versions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("expires_at", _timestamp(), nullable=False),
        sa.Column("used_at", _timestamp(), nullable=True),
        sa.Column("used_by", sa.String(64), nullable=True),
    )
    op.create_table(
        "device_certificates",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("issued_at", _timestamp(), nullable=False),
        sa.Column("not_after", _timestamp(), nullable=False),
        sa.Column("revoked_at", _timestamp(), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_device_certificates_device", "device_certificates", ["device_id"])
    # Deployments recorded before this revision carry no signed version.
    op.add_column("deployments", sa.Column("manifest_version", sa.BigInteger(), nullable=True))
    op.add_column(
        "deployments",
        sa.Column("rollback", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("rollback")
        batch.drop_column("manifest_version")
    op.drop_index("ix_device_certificates_device", table_name="device_certificates")
    op.drop_table("device_certificates")
    op.drop_table("enrollment_tokens")
