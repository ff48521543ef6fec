"""The registry: typed reads and writes of devices, models, plans, variants, deployments,
telemetry and events.

Every method runs in its own transaction and returns ORM rows detached from their session.
The rows are snapshots of the committed values, so change state only through these methods.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from edgefleet.controller.db import Database
from edgefleet.controller.errors import (
    DatabaseError,
    UnknownDeviceError,
    UnknownModelError,
    UnknownVariantError,
)
from edgefleet.controller.models import (
    DeploymentRow,
    DeploymentState,
    DeviceRow,
    DeviceState,
    EventKind,
    EventRow,
    ModelRow,
    PlanRow,
    PlanState,
    ProfileRow,
    TelemetryRow,
    VariantRow,
    utc_now,
)
from edgefleet.controller.telemetry import TelemetryRecord
from edgefleet.profiles import DeviceProfile, parse_profile

__all__ = ["DeviceRegistration", "Registry", "VariantRecord", "insert_profile"]

# Device columns that ``Registry.update_device`` may change.
_UPDATABLE_DEVICE_FIELDS = frozenset(
    {"latency_scale", "state", "current_variant_id", "desired_variant_id", "pinned", "last_seen"}
)


@dataclass(frozen=True, slots=True)
class VariantRecord:
    """A variant to store: its metrics, its serialized manifest and its ladder position."""

    variant_id: str
    recipe_json: str
    sha256: str
    size_bytes: int
    accuracy: float
    latency_p95_ms: float
    host_latency_p95_ms: float
    peak_memory_mb: float
    manifest: bytes
    ladder_rank: int | None


@dataclass(frozen=True, slots=True)
class DeviceRegistration:
    """One device to insert or refresh in ``Registry.register_devices``.

    A ``latency_scale`` replaces the device's, and ``event`` is recorded with the row.
    """

    device_id: str
    profile: DeviceProfile
    calibration: dict[str, Any] | None = None
    agent_version: str = ""
    onnxruntime_version: str = ""
    current_variant_id: str | None = None
    latency_scale: float | None = None
    event: EventRow | None = None


class Registry:
    """Reads and writes of the controller's state; see the module docstring."""

    def __init__(self, database: Database) -> None:
        self._database = database

    @property
    def database(self) -> Database:
        """The database, for read queries this class does not offer (HTTP API, metrics)."""
        return self._database

    # -- devices and profiles -------------------------------------------------------

    def register_device(
        self,
        device_id: str,
        profile: DeviceProfile,
        *,
        calibration: dict[str, Any] | None = None,
        agent_version: str = "",
        onnxruntime_version: str = "",
        current_variant_id: str | None = None,
        latency_scale: float | None = None,
        event: EventRow | None = None,
    ) -> DeviceRow:
        """Insert a device, or refresh the profile and calibration of a known one.

        A ``latency_scale`` replaces the device's, and ``event`` is recorded in the same
        transaction.
        """
        registration = DeviceRegistration(
            device_id=device_id,
            profile=profile,
            calibration=calibration,
            agent_version=agent_version,
            onnxruntime_version=onnxruntime_version,
            current_variant_id=current_variant_id,
            latency_scale=latency_scale,
            event=event,
        )
        return self.register_devices([registration])[0]

    def register_devices(self, registrations: Sequence[DeviceRegistration]) -> list[DeviceRow]:
        """Insert or refresh many devices in one transaction; returns their rows in order.

        One commit for the whole batch, because a reconnecting fleet sends hundreds of
        registrations a second. A device id that appears twice ends with the later values.
        """
        ids = list({registration.device_id for registration in registrations})
        with self._database.session() as session:
            for profile in {r.profile.fingerprint: r.profile for r in registrations}.values():
                self._ensure_profile(session, profile)
            known = {
                device.device_id: device
                for device in session.scalars(
                    sa.select(DeviceRow).where(DeviceRow.device_id.in_(ids))
                )
            }
            rows = []
            for registration in registrations:
                device = known.get(registration.device_id)
                if device is None:
                    device = DeviceRow(
                        device_id=registration.device_id, state=DeviceState.OFFLINE, pinned=False
                    )
                    session.add(device)
                    known[registration.device_id] = device
                _refresh_device(device, registration)
                if registration.event is not None:
                    session.add(registration.event)
                rows.append(device)
            return rows

    def _ensure_profile(self, session: sa.orm.Session, profile: DeviceProfile) -> None:
        if session.get(ProfileRow, profile.fingerprint) is None:
            insert_profile(session, profile)

    def find_device(self, device_id: str) -> DeviceRow | None:
        with self._database.session() as session:
            return session.get(DeviceRow, device_id)

    def get_device(self, device_id: str) -> DeviceRow:
        """Return the device; raises ``UnknownDeviceError`` if it never registered."""
        device = self.find_device(device_id)
        if device is None:
            raise UnknownDeviceError(f"device {device_id!r} is not registered; register first")
        return device

    def get_devices(self, device_ids: Collection[str]) -> dict[str, DeviceRow]:
        """Return the registered ones of ``device_ids`` in one query, by device id."""
        if not device_ids:
            return {}
        query = sa.select(DeviceRow).where(DeviceRow.device_id.in_(list(device_ids)))
        with self._database.session() as session:
            return {device.device_id: device for device in session.scalars(query)}

    def list_devices(self, *, profile_fingerprint: str | None = None) -> list[DeviceRow]:
        query = sa.select(DeviceRow).order_by(DeviceRow.device_id)
        if profile_fingerprint is not None:
            query = query.where(DeviceRow.profile_fingerprint == profile_fingerprint)
        with self._database.session() as session:
            return list(session.scalars(query))

    def update_device(
        self, device_id: str, *, event: EventRow | None = None, **fields: Any
    ) -> DeviceRow:
        """Set the given columns of a device and return the updated row.

        ``event`` is recorded in the same transaction.
        """
        unknown = sorted(set(fields) - _UPDATABLE_DEVICE_FIELDS)
        if unknown:
            raise TypeError(f"update_device got unknown or read-only field(s) {unknown}")
        with self._database.session() as session:
            device = session.get(DeviceRow, device_id)
            if device is None:
                raise UnknownDeviceError(f"device {device_id!r} is not registered")
            for name, value in fields.items():
                setattr(device, name, value)
            if event is not None:
                session.add(event)
            return device

    def update_devices(
        self, changes: Mapping[str, Mapping[str, Any]], *, events: Iterable[EventRow] = ()
    ) -> dict[str, DeviceRow]:
        """Set columns of many devices in one transaction; returns the rows, by device id.

        Devices that are not registered are left out of the result, and their events
        are not recorded.
        """
        for device_fields in changes.values():
            unknown = sorted(set(device_fields) - _UPDATABLE_DEVICE_FIELDS)
            if unknown:
                raise TypeError(f"update_devices got unknown or read-only field(s) {unknown}")
        with self._database.session() as session:
            devices = {
                device.device_id: device
                for device in session.scalars(
                    sa.select(DeviceRow).where(DeviceRow.device_id.in_(list(changes)))
                )
            }
            for device_id, device in devices.items():
                for name, value in changes[device_id].items():
                    setattr(device, name, value)
            session.add_all(event for event in events if event.device_id in devices)
            return devices

    def set_presence(
        self,
        device_ids: Collection[str],
        state: DeviceState,
        *,
        reason: str,
        unseen_since: datetime | None = None,
    ) -> list[str]:
        """Set devices in the other state to ``state``, with an event each; returns their ids.

        With ``unseen_since``, only devices whose ``last_seen`` is older change, so one
        that opened a session or sent a sample meanwhile keeps its state. One statement
        both checks and changes, so a concurrent session open is never overwritten.
        """
        if not device_ids:
            return []
        statement = (
            sa.update(DeviceRow)
            .where(DeviceRow.device_id.in_(list(device_ids)), DeviceRow.state != state)
            .values(state=state)
            .returning(DeviceRow.device_id)
        )
        if unseen_since is not None:
            statement = statement.where(_unseen_since(unseen_since))
        kind = EventKind.CONNECTED if state is DeviceState.ONLINE else EventKind.DISCONNECTED
        with self._database.session() as session:
            changed = sorted(session.scalars(statement))
            now = utc_now()
            session.add_all(
                EventRow(at=now, kind=kind, device_id=device_id, reason=reason, details={})
                for device_id in changed
            )
        return changed

    def mark_devices_offline(
        self, device_ids: Collection[str] | None = None, *, unseen_since: datetime | None = None
    ) -> int:
        """Set devices offline without events (at start and shutdown); returns how many changed.

        ``device_ids`` None means every device. With ``unseen_since``, only devices whose
        ``last_seen`` is older change, so those that other controller processes serve stay
        online.
        """
        statement = (
            sa.update(DeviceRow)
            .where(DeviceRow.state != DeviceState.OFFLINE)
            .values(state=DeviceState.OFFLINE)
        )
        if device_ids is not None:
            if not device_ids:
                return 0
            statement = statement.where(DeviceRow.device_id.in_(list(device_ids)))
        if unseen_since is not None:
            statement = statement.where(_unseen_since(unseen_since))
        with self._database.session() as session:
            return session.execute(statement).rowcount

    def online_devices_unseen_since(self, unseen_since: datetime) -> list[str]:
        """Return the devices shown online whose ``last_seen`` is older than ``unseen_since``."""
        query = sa.select(DeviceRow.device_id).where(
            DeviceRow.state != DeviceState.OFFLINE, _unseen_since(unseen_since)
        )
        with self._database.session() as session:
            return list(session.scalars(query))

    def delete_device(self, device_id: str) -> None:
        """Delete a device with its deployments and telemetry; its events remain."""
        with self._database.session() as session:
            device = session.get(DeviceRow, device_id)
            if device is None:
                raise UnknownDeviceError(f"device {device_id!r} is not registered")
            for table in (TelemetryRow, DeploymentRow):
                session.execute(sa.delete(table).where(table.device_id == device_id))
            session.delete(device)

    def get_profile(self, fingerprint: str) -> DeviceProfile:
        with self._database.session() as session:
            row = session.get(ProfileRow, fingerprint)
        if row is None:
            raise KeyError(f"no profile with fingerprint {fingerprint}")
        return parse_profile(row.profile, source=f"stored profile {fingerprint[:12]}")

    def profile_fingerprints(self) -> list[str]:
        """Return the fingerprints that at least one registered device uses."""
        query = (
            sa.select(DeviceRow.profile_fingerprint)
            .distinct()
            .order_by(DeviceRow.profile_fingerprint)
        )
        with self._database.session() as session:
            return list(session.scalars(query))

    # -- models ---------------------------------------------------------------------

    def register_model(
        self, *, name: str, digest: str, source: str, data_path: str, weights_path: str | None
    ) -> ModelRow:
        """Insert a model, or mark an identical one (same digest) as registered again."""
        with self._database.session() as session:
            model = session.scalars(sa.select(ModelRow).where(ModelRow.digest == digest)).first()
            if model is None:
                model = ModelRow(
                    id=digest[:16],
                    name=name,
                    digest=digest,
                    source=source,
                    data_path=data_path,
                    weights_path=weights_path,
                )
                session.add(model)
            model.registered_at = utc_now()
            return model

    def get_model(self, model_id: str) -> ModelRow:
        with self._database.session() as session:
            model = session.get(ModelRow, model_id)
        if model is None:
            raise UnknownModelError(f"no model with id {model_id!r} is registered")
        return model

    def active_model(self) -> ModelRow | None:
        """Return the most recently registered model, which devices are served from."""
        query = sa.select(ModelRow).order_by(ModelRow.registered_at.desc()).limit(1)
        with self._database.session() as session:
            return session.scalars(query).first()

    # -- plans and variants ---------------------------------------------------------

    def create_plan(
        self, model_id: str, profile_fingerprint: str, *, latency_scale: float
    ) -> PlanRow:
        """Insert a PENDING plan with the next generation number for this model and profile."""
        with self._database.session() as session:
            latest = session.scalar(
                sa.select(sa.func.max(PlanRow.generation)).where(
                    PlanRow.model_id == model_id,
                    PlanRow.profile_fingerprint == profile_fingerprint,
                )
            )
            plan = PlanRow(
                model_id=model_id,
                profile_fingerprint=profile_fingerprint,
                generation=0 if latest is None else latest + 1,
                state=PlanState.PENDING,
                latency_scale=latency_scale,
                reason="",
            )
            session.add(plan)
            session.flush()
            return plan

    def update_plan(
        self,
        plan_id: int,
        *,
        state: PlanState,
        reason: str = "",
        report: dict[str, Any] | None = None,
    ) -> PlanRow:
        with self._database.session() as session:
            plan = session.get(PlanRow, plan_id)
            if plan is None:
                raise KeyError(f"no plan with id {plan_id}")
            plan.state = state
            plan.reason = reason
            if report is not None:
                plan.report = report
            if state in (PlanState.DONE, PlanState.FAILED):
                plan.finished_at = utc_now()
            return plan

    def list_plans(
        self,
        *,
        model_id: str | None = None,
        profile_fingerprint: str | None = None,
        states: Iterable[PlanState] | None = None,
    ) -> list[PlanRow]:
        query = sa.select(PlanRow).order_by(PlanRow.id)
        if model_id is not None:
            query = query.where(PlanRow.model_id == model_id)
        if profile_fingerprint is not None:
            query = query.where(PlanRow.profile_fingerprint == profile_fingerprint)
        if states is not None:
            query = query.where(PlanRow.state.in_(list(states)))
        with self._database.session() as session:
            return list(session.scalars(query))

    def store_variants(
        self,
        model_id: str,
        profile_fingerprint: str,
        variants: Sequence[VariantRecord],
        *,
        plan_id: int | None,
    ) -> None:
        """Insert variants, updating any already stored, and replace the ladder.

        Ranks in ``variants`` define the new ladder; stored variants not in it leave it.
        """
        with self._database.session() as session:
            session.execute(
                sa.update(VariantRow)
                .where(
                    VariantRow.model_id == model_id,
                    VariantRow.profile_fingerprint == profile_fingerprint,
                )
                .values(ladder_rank=None)
            )
            for record in variants:
                row = self._find_variant(session, model_id, profile_fingerprint, record.variant_id)
                if row is None:
                    row = VariantRow(
                        variant_id=record.variant_id,
                        model_id=model_id,
                        profile_fingerprint=profile_fingerprint,
                        plan_id=plan_id,
                    )
                    session.add(row)
                for name in (
                    "recipe_json", "sha256", "size_bytes", "accuracy", "latency_p95_ms",
                    "host_latency_p95_ms", "peak_memory_mb", "manifest", "ladder_rank",
                ):  # fmt: skip
                    setattr(row, name, getattr(record, name))

    @staticmethod
    def _find_variant(
        session: sa.orm.Session, model_id: str, profile_fingerprint: str, variant_id: str
    ) -> VariantRow | None:
        return session.scalars(
            sa.select(VariantRow).where(
                VariantRow.model_id == model_id,
                VariantRow.profile_fingerprint == profile_fingerprint,
                VariantRow.variant_id == variant_id,
            )
        ).first()

    def ladder(self, model_id: str, profile_fingerprint: str) -> list[VariantRow]:
        """Return the ladder, most accurate rung first; empty until a plan finished."""
        query = (
            sa.select(VariantRow)
            .where(
                VariantRow.model_id == model_id,
                VariantRow.profile_fingerprint == profile_fingerprint,
                VariantRow.ladder_rank.is_not(None),
            )
            .order_by(VariantRow.ladder_rank)
        )
        with self._database.session() as session:
            return list(session.scalars(query))

    def get_variant(self, model_id: str, profile_fingerprint: str, variant_id: str) -> VariantRow:
        with self._database.session() as session:
            row = self._find_variant(session, model_id, profile_fingerprint, variant_id)
        if row is None:
            raise UnknownVariantError(
                f"no variant {variant_id!r} of model {model_id!r} for profile "
                f"{profile_fingerprint[:12]}"
            )
        return row

    # -- deployments ----------------------------------------------------------------

    def create_deployment(
        self,
        device_id: str,
        variant_id: str,
        *,
        previous_variant_id: str | None,
        reason: str,
        rollback: bool = False,
    ) -> DeploymentRow:
        """Insert a PENDING deployment, supersede unfinished ones and set the desired variant.

        The deployment's manifest version is the current time in milliseconds, or one more
        than the device's latest version if that is higher. Versions therefore keep growing
        across a controller restart and through a controller clock that steps back.
        """
        now = utc_now()
        with self._database.session() as session:
            device = session.get(DeviceRow, device_id)
            if device is None:
                raise UnknownDeviceError(f"device {device_id!r} is not registered")
            latest_version = session.scalar(
                sa.select(sa.func.max(DeploymentRow.manifest_version)).where(
                    DeploymentRow.device_id == device_id
                )
            )
            version = max(int(now.timestamp() * 1000), (latest_version or 0) + 1)
            session.execute(
                sa.update(DeploymentRow)
                .where(
                    DeploymentRow.device_id == device_id,
                    DeploymentRow.state.not_in(
                        [state for state in DeploymentState if state.is_terminal]
                    ),
                )
                .values(state=DeploymentState.SUPERSEDED, updated_at=now)
            )
            deployment = DeploymentRow(
                id=uuid.uuid4().hex,
                device_id=device_id,
                variant_id=variant_id,
                previous_variant_id=previous_variant_id,
                state=DeploymentState.PENDING,
                reason=reason,
                created_at=now,
                updated_at=now,
                manifest_version=version,
                rollback=rollback,
            )
            session.add(deployment)
            device.desired_variant_id = variant_id
            return deployment

    def find_deployment(self, deployment_id: str) -> DeploymentRow | None:
        with self._database.session() as session:
            return session.get(DeploymentRow, deployment_id)

    def update_deployment(
        self, deployment_id: str, *, state: DeploymentState, reason: str | None = None
    ) -> DeploymentRow:
        with self._database.session() as session:
            deployment = session.get(DeploymentRow, deployment_id)
            if deployment is None:
                raise KeyError(f"no deployment with id {deployment_id!r}")
            deployment.state = state
            if reason is not None:
                deployment.reason = reason
            deployment.updated_at = utc_now()
            return deployment

    def latest_deployment(self, device_id: str) -> DeploymentRow | None:
        query = (
            sa.select(DeploymentRow)
            .where(DeploymentRow.device_id == device_id)
            .order_by(DeploymentRow.created_at.desc())
            .limit(1)
        )
        with self._database.session() as session:
            return session.scalars(query).first()

    def list_deployments(self, device_id: str) -> list[DeploymentRow]:
        query = (
            sa.select(DeploymentRow)
            .where(DeploymentRow.device_id == device_id)
            .order_by(DeploymentRow.created_at)
        )
        with self._database.session() as session:
            return list(session.scalars(query))

    # -- telemetry ------------------------------------------------------------------

    def add_telemetry(self, record: TelemetryRecord) -> None:
        """Store a validated sample and update the device's ``last_seen``."""
        with self._database.session() as session:
            session.add(TelemetryRow(**_record_fields(record)))
            session.execute(
                sa.update(DeviceRow)
                .where(DeviceRow.device_id == record.device_id)
                .values(last_seen=record.received_at)
            )

    def add_telemetry_many(self, records: Sequence[TelemetryRecord]) -> None:
        """Store validated samples of registered devices in one transaction.

        Each device's ``last_seen`` becomes the latest ``received_at`` among its samples.
        """
        if not records:
            return
        last_seen: dict[str, datetime] = {}
        for record in records:
            previous = last_seen.get(record.device_id)
            if previous is None or record.received_at > previous:
                last_seen[record.device_id] = record.received_at
        # Core statements on the tables: the ORM's bulk paths cost about as much Python
        # per row again, and a batch has hundreds of rows.
        devices = DeviceRow.__table__
        update_last_seen = (
            sa.update(devices)
            .where(devices.c.device_id == sa.bindparam("key"))
            .values(last_seen=sa.bindparam("seen"))
        )
        with self._database.session() as session:
            session.execute(TelemetryRow.__table__.insert(), [_record_fields(r) for r in records])
            session.execute(
                update_last_seen,
                [{"key": key, "seen": seen} for key, seen in last_seen.items()],
            )

    def existing_device_ids(self, device_ids: Collection[str]) -> set[str]:
        """Return those of ``device_ids`` that are registered."""
        if not device_ids:
            return set()
        query = sa.select(DeviceRow.device_id).where(DeviceRow.device_id.in_(list(device_ids)))
        with self._database.session() as session:
            return set(session.scalars(query))

    def recent_telemetry(self, device_id: str, *, limit: int) -> list[TelemetryRecord]:
        """Return the device's newest samples, oldest first."""
        query = (
            sa.select(TelemetryRow)
            .where(TelemetryRow.device_id == device_id)
            .order_by(TelemetryRow.received_at.desc(), TelemetryRow.id.desc())
            .limit(limit)
        )
        with self._database.session() as session:
            rows = list(session.scalars(query))
        return [_row_to_record(row) for row in reversed(rows)]

    def count_telemetry(self, device_id: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(TelemetryRow)
        if device_id is not None:
            query = query.where(TelemetryRow.device_id == device_id)
        with self._database.session() as session:
            return int(session.scalar(query) or 0)

    def delete_telemetry_before(self, cutoff: datetime) -> int:
        """Delete samples received before ``cutoff``; returns how many were deleted."""
        with self._database.session() as session:
            result = session.execute(
                sa.delete(TelemetryRow).where(TelemetryRow.received_at < cutoff)
            )
            return result.rowcount

    # -- events ---------------------------------------------------------------------

    def record_event(
        self,
        kind: EventKind,
        *,
        device_id: str | None = None,
        reason: str = "",
        from_variant: str | None = None,
        to_variant: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> EventRow:
        event = EventRow(
            at=utc_now(),
            kind=kind,
            device_id=device_id,
            reason=reason,
            from_variant=from_variant,
            to_variant=to_variant,
            details=details or {},
        )
        with self._database.session() as session:
            session.add(event)
            session.flush()
            return event

    def list_events(
        self,
        *,
        device_id: str | None = None,
        kinds: Iterable[EventKind] | None = None,
        limit: int | None = None,
    ) -> list[EventRow]:
        """Return events oldest first, optionally filtered by device and kind."""
        query = sa.select(EventRow).order_by(EventRow.id)
        if device_id is not None:
            query = query.where(EventRow.device_id == device_id)
        if kinds is not None:
            query = query.where(EventRow.kind.in_(list(kinds)))
        if limit is not None:
            query = query.limit(limit)
        with self._database.session() as session:
            return list(session.scalars(query))


def _unseen_since(when: datetime) -> sa.ColumnElement[bool]:
    """Select devices not heard from since ``when``, including those never heard from."""
    return sa.or_(DeviceRow.last_seen.is_(None), DeviceRow.last_seen < when)


def _refresh_device(device: DeviceRow, registration: DeviceRegistration) -> None:
    profile = registration.profile
    if device.profile_fingerprint is not None and device.profile_fingerprint != profile.fingerprint:
        # Variants belong to a profile, so a new profile invalidates the target.
        device.desired_variant_id = None
        device.latency_scale = None
    device.profile_fingerprint = profile.fingerprint
    device.profile = profile.to_dict()
    device.calibration = registration.calibration
    device.agent_version = registration.agent_version
    device.onnxruntime_version = registration.onnxruntime_version
    device.current_variant_id = registration.current_variant_id or None
    device.last_seen = utc_now()
    if registration.latency_scale is not None:
        device.latency_scale = registration.latency_scale


def _record_fields(record: TelemetryRecord) -> dict[str, Any]:
    return {field: getattr(record, field) for field in TelemetryRecord.__dataclass_fields__}


def _row_to_record(row: TelemetryRow) -> TelemetryRecord:
    return TelemetryRecord(
        **{field: getattr(row, field) for field in TelemetryRecord.__dataclass_fields__}
    )


def insert_profile(session: sa.orm.Session, profile: DeviceProfile) -> None:
    """Insert ``profile`` unless a row with its fingerprint exists.

    Devices of a new profile registering at once each find no row, so the insert ignores
    a conflict instead of failing all registrations but one.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        insert = postgresql.insert
    elif dialect == "sqlite":
        insert = sqlite.insert
    else:
        raise DatabaseError(f"unsupported database {dialect!r}; use SQLite or PostgreSQL")
    statement = insert(ProfileRow).values(
        fingerprint=profile.fingerprint, name=profile.name, profile=profile.to_dict()
    )
    session.execute(statement.on_conflict_do_nothing(index_elements=[ProfileRow.fingerprint]))
