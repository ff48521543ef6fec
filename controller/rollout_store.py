"""Database reads and writes of rollouts, their waves and their devices.

Like ``Registry``, every method runs in its own short transaction and returns detached
rows, snapshots of the committed values.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from edgefleet.controller.db import Database
from edgefleet.controller.errors import UnknownRolloutError
from edgefleet.controller.models import (
    DeploymentRow,
    RolloutDeviceRow,
    RolloutDeviceState,
    RolloutRow,
    RolloutState,
    RolloutWaveRow,
    TelemetryRow,
    VariantRow,
    utc_now,
)

__all__ = ["LatencyWindow", "RolloutStore"]

_ACTIVE_ROLLOUT_STATES = [state for state in RolloutState if not state.is_terminal]
_UNSETTLED_DEVICE_STATES = [state for state in RolloutDeviceState if not state.is_settled]


class LatencyWindow:
    """Served p95 latencies of one device on one variant over a time window."""

    def __init__(self, p95_ms: Sequence[float]) -> None:
        self.p95_ms = tuple(p95_ms)

    @property
    def count(self) -> int:
        return len(self.p95_ms)

    def median(self) -> float | None:
        # The median of the per-sample p95 values: one sample taken during a stall or a
        # garbage collection does not decide the gate either way.
        return statistics.median(self.p95_ms) if self.p95_ms else None


class RolloutStore:
    """Rollout tables; see the module docstring."""

    def __init__(self, database: Database) -> None:
        self._database = database

    # -- rollouts -------------------------------------------------------------------

    def create(
        self,
        rollout: RolloutRow,
        waves: Sequence[RolloutWaveRow],
        devices: Sequence[RolloutDeviceRow],
    ) -> RolloutRow:
        """Insert a rollout with its waves and devices in one transaction."""
        with self._database.session() as session:
            session.add(rollout)
            session.flush()
            session.add_all(waves)
            session.add_all(devices)
            return rollout

    def find(self, rollout_id: str) -> RolloutRow | None:
        with self._database.session() as session:
            return session.get(RolloutRow, rollout_id)

    def get(self, rollout_id: str) -> RolloutRow:
        """Return the rollout; raises ``UnknownRolloutError``."""
        row = self.find(rollout_id)
        if row is None:
            raise UnknownRolloutError(f"no rollout with id {rollout_id!r}")
        return row

    def list(
        self, *, states: Iterable[RolloutState] | None = None, limit: int | None = None
    ) -> list[RolloutRow]:
        """Return rollouts, newest first."""
        query = sa.select(RolloutRow).order_by(RolloutRow.created_at.desc(), RolloutRow.id)
        if states is not None:
            query = query.where(RolloutRow.state.in_(list(states)))
        if limit is not None:
            query = query.limit(limit)
        with self._database.session() as session:
            return list(session.scalars(query))

    def list_active(self) -> list[RolloutRow]:
        """Return the rollouts still running or paused, oldest first."""
        query = (
            sa.select(RolloutRow)
            .where(RolloutRow.state.in_(_ACTIVE_ROLLOUT_STATES))
            .order_by(RolloutRow.created_at, RolloutRow.id)
        )
        with self._database.session() as session:
            return list(session.scalars(query))

    def update(self, rollout_id: str, **fields: Any) -> RolloutRow:
        with self._database.session() as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise UnknownRolloutError(f"no rollout with id {rollout_id!r}")
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utc_now()
            return row

    # -- waves ----------------------------------------------------------------------

    def waves(self, rollout_id: str) -> list[RolloutWaveRow]:
        query = (
            sa.select(RolloutWaveRow)
            .where(RolloutWaveRow.rollout_id == rollout_id)
            .order_by(RolloutWaveRow.index)
        )
        with self._database.session() as session:
            return list(session.scalars(query))

    def update_wave(self, rollout_id: str, index: int, **fields: Any) -> RolloutWaveRow:
        with self._database.session() as session:
            row = session.get(RolloutWaveRow, (rollout_id, index))
            if row is None:
                raise UnknownRolloutError(f"rollout {rollout_id!r} has no wave {index}")
            for name, value in fields.items():
                setattr(row, name, value)
            return row

    # -- devices --------------------------------------------------------------------

    def devices(self, rollout_id: str) -> list[RolloutDeviceRow]:
        query = (
            sa.select(RolloutDeviceRow)
            .where(RolloutDeviceRow.rollout_id == rollout_id)
            .order_by(RolloutDeviceRow.wave, RolloutDeviceRow.device_id)
        )
        with self._database.session() as session:
            return list(session.scalars(query))

    def update_device(self, rollout_id: str, device_id: str, **fields: Any) -> RolloutDeviceRow:
        with self._database.session() as session:
            row = session.get(RolloutDeviceRow, (rollout_id, device_id))
            if row is None:
                raise UnknownRolloutError(f"rollout {rollout_id!r} has no device {device_id!r}")
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utc_now()
            return row

    def controlled_devices(self) -> dict[str, str]:
        """Return the devices a rollout controls, each with that rollout's id.

        A rollout controls its devices while it runs or is paused, and after it ended
        until the devices it was sending a variant to have reported.
        """
        query = (
            sa.select(RolloutDeviceRow.device_id, RolloutDeviceRow.rollout_id)
            .join(RolloutRow, RolloutRow.id == RolloutDeviceRow.rollout_id)
            .where(
                sa.or_(
                    RolloutRow.state.in_(_ACTIVE_ROLLOUT_STATES),
                    RolloutDeviceRow.state.in_(_UNSETTLED_DEVICE_STATES),
                )
            )
        )
        with self._database.session() as session:
            return {device_id: rollout_id for device_id, rollout_id in session.execute(query)}

    def rollouts_with_unsettled_devices(self) -> list[str]:
        """Return ended rollouts that still wait for a device's report (a revert, say)."""
        query = (
            sa.select(RolloutDeviceRow.rollout_id)
            .join(RolloutRow, RolloutRow.id == RolloutDeviceRow.rollout_id)
            .where(
                RolloutRow.state.not_in(_ACTIVE_ROLLOUT_STATES),
                RolloutDeviceRow.state.in_(_UNSETTLED_DEVICE_STATES),
            )
            .distinct()
        )
        with self._database.session() as session:
            return list(session.scalars(query))

    # -- lookups for the engine -----------------------------------------------------

    def deployments(self, deployment_ids: Iterable[str | None]) -> dict[str, DeploymentRow]:
        """Return the deployments with these ids by id, in one query; None ids are skipped."""
        ids = [deployment_id for deployment_id in deployment_ids if deployment_id is not None]
        if not ids:
            return {}
        query = sa.select(DeploymentRow).where(DeploymentRow.id.in_(ids))
        with self._database.session() as session:
            return {row.id: row for row in session.scalars(query)}

    def find_variant_model(
        self, profile_fingerprint: str, variant_id: str, *, prefer_model_id: str | None = None
    ) -> str | None:
        """Return the model of a stored variant for a profile.

        Two models can share a variant (the same ONNX file); then ``prefer_model_id`` wins
        if it is one of them, else the model that stored the variant last.
        """
        query = (
            sa.select(VariantRow.model_id)
            .where(
                VariantRow.profile_fingerprint == profile_fingerprint,
                VariantRow.variant_id == variant_id,
            )
            .order_by(VariantRow.created_at.desc())
        )
        with self._database.session() as session:
            models = list(session.scalars(query))
        if prefer_model_id in models:
            return prefer_model_id
        return models[0] if models else None

    def served_latency(
        self, device_id: str, variant_id: str, *, since: datetime, until: datetime
    ) -> LatencyWindow:
        """Return the p95 of the device's samples that served requests on ``variant_id``."""
        query = (
            sa.select(TelemetryRow.latency_p95_ms)
            .where(
                TelemetryRow.device_id == device_id,
                TelemetryRow.variant_id == variant_id,
                TelemetryRow.requests > 0,
                TelemetryRow.received_at >= since,
                TelemetryRow.received_at <= until,
            )
            .order_by(TelemetryRow.received_at)
        )
        with self._database.session() as session:
            return LatencyWindow(list(session.scalars(query)))
