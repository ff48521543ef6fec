"""Read queries of the HTTP API and the metrics collector that the registry lacks.

Each function runs one short read transaction on the controller's database and returns
plain values or detached rows. Downsampling happens in SQL: a bucket number is computed
per row from its received time, and rows are grouped by it, so a month of one-second
samples never travels to Python to be averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from edgefleet.controller.db import Database
from edgefleet.controller.models import (
    DeploymentRow,
    DeploymentState,
    EventKind,
    EventRow,
    ModelRow,
    ProfileRow,
    TelemetryRow,
    VariantRow,
)
from edgefleet.controller.telemetry import TelemetryRecord

__all__ = [
    "TelemetryBucket",
    "count_events_by_kind",
    "latest_event_id",
    "latest_telemetry",
    "list_deployments",
    "list_events",
    "list_models",
    "list_profiles",
    "list_variants",
    "telemetry_history",
]


class _EpochBucket(FunctionElement[int]):
    """``floor(epoch_seconds(column) / step)`` for a datetime column, per dialect."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(_EpochBucket, "sqlite")
def _epoch_bucket_sqlite(element: _EpochBucket, compiler: Any, **kw: Any) -> str:
    column, step = list(element.clauses)
    # strftime('%s') returns whole Unix seconds as text; integer division by a positive
    # step then floors, because Unix seconds after 1970 are positive.
    return (
        f"(CAST(strftime('%s', {compiler.process(column, **kw)}) AS INTEGER) "
        f"/ {compiler.process(step, **kw)})"
    )


@compiles(_EpochBucket, "postgresql")
def _epoch_bucket_postgresql(element: _EpochBucket, compiler: Any, **kw: Any) -> str:
    column, step = list(element.clauses)
    return (
        f"CAST(FLOOR(EXTRACT(EPOCH FROM {compiler.process(column, **kw)}) "
        f"/ {compiler.process(step, **kw)}) AS BIGINT)"
    )


@dataclass(frozen=True, slots=True)
class TelemetryBucket:
    """The samples of one time bucket aggregated; one sample when not downsampled."""

    at: datetime
    samples: int
    cpu_percent: float
    memory_available_mb: float
    memory_total_mb: float
    temperature_c: float | None
    agent_rss_mb: float
    requests: int
    throughput_rps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_p95_max_ms: float


def telemetry_history(
    database: Database,
    device_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    step_s: int | None,
    limit: int,
) -> tuple[list[TelemetryBucket], bool]:
    """Return a device's samples (or buckets of ``step_s`` seconds), oldest first.

    When more than ``limit`` samples or buckets fall in the range, the newest ``limit``
    are returned and the second value is True.
    """
    conditions: list[ColumnElement[bool]] = [TelemetryRow.device_id == device_id]
    if since is not None:
        conditions.append(TelemetryRow.received_at >= since)
    if until is not None:
        conditions.append(TelemetryRow.received_at <= until)

    if step_s is None:
        raw_query = (
            sa.select(TelemetryRow)
            .where(*conditions)
            .order_by(TelemetryRow.received_at.desc(), TelemetryRow.id.desc())
            .limit(limit + 1)
        )
        with database.session() as session:
            rows = list(session.scalars(raw_query))
        truncated = len(rows) > limit
        return [_bucket_of_row(row) for row in reversed(rows[:limit])], truncated

    bucket = _EpochBucket(TelemetryRow.received_at, sa.literal(step_s, sa.BigInteger))
    bucket_query = (
        sa.select(
            bucket.label("bucket"),
            sa.func.count().label("samples"),
            sa.func.avg(TelemetryRow.cpu_percent),
            sa.func.avg(TelemetryRow.memory_available_mb),
            sa.func.avg(TelemetryRow.memory_total_mb),
            sa.func.avg(TelemetryRow.temperature_c),
            sa.func.avg(TelemetryRow.agent_rss_mb),
            sa.func.sum(TelemetryRow.requests),
            sa.func.avg(TelemetryRow.throughput_rps),
            sa.func.avg(TelemetryRow.latency_p50_ms),
            sa.func.avg(TelemetryRow.latency_p95_ms),
            sa.func.avg(TelemetryRow.latency_p99_ms),
            sa.func.max(TelemetryRow.latency_p95_ms),
        )
        .where(*conditions)
        .group_by("bucket")
        .order_by(sa.desc("bucket"))
        .limit(limit + 1)
    )
    with database.session() as session:
        results = list(session.execute(bucket_query))
    truncated = len(results) > limit
    buckets = [
        TelemetryBucket(
            at=datetime.fromtimestamp(int(row[0]) * step_s, UTC),
            samples=int(row[1]),
            cpu_percent=float(row[2]),
            memory_available_mb=float(row[3]),
            memory_total_mb=float(row[4]),
            temperature_c=None if row[5] is None else float(row[5]),
            agent_rss_mb=float(row[6]),
            requests=int(row[7] or 0),
            throughput_rps=float(row[8]),
            latency_p50_ms=float(row[9]),
            latency_p95_ms=float(row[10]),
            latency_p99_ms=float(row[11]),
            latency_p95_max_ms=float(row[12]),
        )
        for row in results[:limit]
    ]
    buckets.reverse()
    return buckets, truncated


def _bucket_of_row(row: TelemetryRow) -> TelemetryBucket:
    return TelemetryBucket(
        at=row.received_at,
        samples=1,
        cpu_percent=row.cpu_percent,
        memory_available_mb=row.memory_available_mb,
        memory_total_mb=row.memory_total_mb,
        temperature_c=row.temperature_c,
        agent_rss_mb=row.agent_rss_mb,
        requests=row.requests,
        throughput_rps=row.throughput_rps,
        latency_p50_ms=row.latency_p50_ms,
        latency_p95_ms=row.latency_p95_ms,
        latency_p99_ms=row.latency_p99_ms,
        latency_p95_max_ms=row.latency_p95_ms,
    )


def latest_telemetry(database: Database) -> dict[str, TelemetryRecord]:
    """Return each device's newest stored sample, keyed by device id."""
    newest = (
        sa.select(sa.func.max(TelemetryRow.id).label("id"))
        .group_by(TelemetryRow.device_id)
        .subquery()
    )
    query = sa.select(TelemetryRow).join(newest, TelemetryRow.id == newest.c.id)
    with database.session() as session:
        rows = list(session.scalars(query))
    return {
        row.device_id: TelemetryRecord(
            **{name: getattr(row, name) for name in TelemetryRecord.__dataclass_fields__}
        )
        for row in rows
    }


def list_deployments(
    database: Database,
    *,
    device_id: str | None = None,
    state: DeploymentState | None = None,
    limit: int,
) -> list[DeploymentRow]:
    """Return deployments newest first, optionally of one device or in one state."""
    query = sa.select(DeploymentRow).order_by(
        DeploymentRow.created_at.desc(), DeploymentRow.id.desc()
    )
    if device_id is not None:
        query = query.where(DeploymentRow.device_id == device_id)
    if state is not None:
        query = query.where(DeploymentRow.state == state)
    with database.session() as session:
        return list(session.scalars(query.limit(limit)))


def list_events(
    database: Database,
    *,
    device_id: str | None = None,
    kinds: list[EventKind] | None = None,
    since: datetime | None = None,
    after_id: int | None = None,
    limit: int,
) -> list[EventRow]:
    """Return events oldest first.

    With ``after_id`` these are the first ``limit`` events after it, so a client that
    follows the log misses none. Without it they are the newest ``limit`` events.
    """
    query = sa.select(EventRow)
    if device_id is not None:
        query = query.where(EventRow.device_id == device_id)
    if kinds:
        query = query.where(EventRow.kind.in_(kinds))
    if since is not None:
        query = query.where(EventRow.at >= since)
    if after_id is not None:
        query = query.where(EventRow.id > after_id).order_by(EventRow.id).limit(limit)
        with database.session() as session:
            return list(session.scalars(query))
    query = query.order_by(EventRow.id.desc()).limit(limit)
    with database.session() as session:
        rows = list(session.scalars(query))
    rows.reverse()
    return rows


def latest_event_id(database: Database) -> int | None:
    with database.session() as session:
        return session.scalar(sa.select(sa.func.max(EventRow.id)))


def count_events_by_kind(database: Database) -> dict[EventKind, int]:
    """Return how many events of each kind are stored (kinds without events are absent)."""
    query = sa.select(EventRow.kind, sa.func.count()).group_by(EventRow.kind)
    with database.session() as session:
        return {EventKind(kind): int(count) for kind, count in session.execute(query)}


def list_variants(
    database: Database, model_id: str, *, profile_fingerprint: str | None = None
) -> list[VariantRow]:
    """Return a model's stored variants, ladder rungs first (by rank), then by accuracy."""
    query = sa.select(VariantRow).where(VariantRow.model_id == model_id)
    if profile_fingerprint is not None:
        query = query.where(VariantRow.profile_fingerprint == profile_fingerprint)
    query = query.order_by(
        VariantRow.profile_fingerprint,
        VariantRow.ladder_rank.is_(None),
        VariantRow.ladder_rank,
        VariantRow.accuracy.desc(),
        VariantRow.variant_id,
    )
    with database.session() as session:
        return list(session.scalars(query))


def list_models(database: Database) -> list[ModelRow]:
    """Return registered models, the most recently registered (the active one) first."""
    query = sa.select(ModelRow).order_by(ModelRow.registered_at.desc(), ModelRow.id)
    with database.session() as session:
        return list(session.scalars(query))


def list_profiles(database: Database) -> dict[str, str]:
    """Return the name of every stored profile, keyed by fingerprint."""
    with database.session() as session:
        return {row.fingerprint: row.name for row in session.scalars(sa.select(ProfileRow))}
