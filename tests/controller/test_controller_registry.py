from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from controller_support import BACKENDS, PROFILE_FIELDS, make_record, store_fake_ladder

from edgefleet.controller.errors import UnknownDeviceError, UnknownVariantError
from edgefleet.controller.models import DeploymentState, DeviceState, EventKind, EventRow
from edgefleet.controller.registry import DeviceRegistration, Registry, insert_profile
from edgefleet.controller.service import Controller
from edgefleet.controller.telemetry import TelemetryRecord
from edgefleet.profiles import DeviceProfile, parse_profile

# Every test runs on SQLite and on a real PostgreSQL server.
pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


def test_register_device_creates_row_and_profile(
    registry: Registry, profile: DeviceProfile
) -> None:
    device = registry.register_device(
        "dev-1", profile, calibration={"threads": 1}, agent_version="0.1.0"
    )

    assert device.profile_fingerprint == profile.fingerprint
    assert device.state is DeviceState.OFFLINE
    assert device.calibration == {"threads": 1}
    assert registry.get_profile(profile.fingerprint) == profile
    assert [row.device_id for row in registry.list_devices()] == ["dev-1"]


def test_reregister_with_new_profile_clears_target(
    registry: Registry, profile: DeviceProfile
) -> None:
    registry.register_device("dev-1", profile)
    registry.update_device("dev-1", desired_variant_id="abc", latency_scale=2.0)
    other = parse_profile({**PROFILE_FIELDS, "latency_budget_ms": 50.0})

    device = registry.register_device("dev-1", other)

    assert device.profile_fingerprint == other.fingerprint
    assert device.desired_variant_id is None
    assert device.latency_scale is None
    assert registry.profile_fingerprints() == [other.fingerprint]


def test_update_and_delete_device(registry: Registry, profile: DeviceProfile) -> None:
    registry.register_device("dev-1", profile)

    updated = registry.update_device("dev-1", state=DeviceState.ONLINE, pinned=True)
    registry.delete_device("dev-1")

    assert updated.state is DeviceState.ONLINE
    assert updated.pinned is True
    assert registry.find_device("dev-1") is None
    with pytest.raises(UnknownDeviceError, match="dev-1"):
        registry.get_device("dev-1")


def test_update_device_rejects_read_only_field(registry: Registry, profile: DeviceProfile) -> None:
    registry.register_device("dev-1", profile)

    with pytest.raises(TypeError, match="profile_fingerprint"):
        registry.update_device("dev-1", profile_fingerprint="x")


def test_register_same_model_twice_is_idempotent(registry: Registry) -> None:
    first = registry.register_model(
        name="m", digest="a" * 64, source="m.onnx", data_path="d.npz", weights_path=None
    )
    second = registry.register_model(
        name="m", digest="a" * 64, source="m.onnx", data_path="d.npz", weights_path=None
    )
    other = registry.register_model(
        name="m2", digest="b" * 64, source="m2.onnx", data_path="d.npz", weights_path=None
    )

    assert first.id == second.id == "a" * 16
    assert registry.active_model().id == other.id


def test_new_deployment_supersedes_unfinished_one(
    registry: Registry, profile: DeviceProfile
) -> None:
    registry.register_device("dev-1", profile)
    first = registry.create_deployment("dev-1", "v1", previous_variant_id=None, reason="a")

    second = registry.create_deployment("dev-1", "v2", previous_variant_id=None, reason="b")

    assert registry.find_deployment(first.id).state is DeploymentState.SUPERSEDED
    assert second.state is DeploymentState.PENDING
    assert registry.get_device("dev-1").desired_variant_id == "v2"
    assert registry.latest_deployment("dev-1").id == second.id


def test_telemetry_stored_and_read_oldest_first(registry: Registry, profile: DeviceProfile) -> None:
    registry.register_device("dev-1", profile)
    for second in range(5):
        registry.add_telemetry(make_record(at=1_700_000_000 + second))

    recent = registry.recent_telemetry("dev-1", limit=3)

    assert [record.seq for record in recent] == [1_700_000_002, 1_700_000_003, 1_700_000_004]
    assert recent[0].received_at.tzinfo is not None
    assert registry.count_telemetry("dev-1") == 5


def test_retention_deletes_only_old_telemetry(
    controller: Controller, profile: DeviceProfile
) -> None:
    registry = controller.registry
    registry.register_device("dev-1", profile)
    now = datetime.now(UTC)
    retention = timedelta(seconds=controller.config.telemetry_retention_s)
    old = (now - retention - timedelta(hours=1)).timestamp()
    fresh = (now - timedelta(minutes=5)).timestamp()
    registry.add_telemetry(make_record(at=old))
    registry.add_telemetry(make_record(at=fresh))

    deleted = controller.delete_expired_telemetry(now=now)

    assert deleted == 1
    remaining = registry.recent_telemetry("dev-1", limit=10)
    assert [record.seq for record in remaining] == [int(fresh)]


def test_events_recorded_with_details(registry: Registry, profile: DeviceProfile) -> None:
    registry.register_device("dev-1", profile)
    registry.record_event(EventKind.REGISTERED, device_id="dev-1", reason="hello")
    registry.record_event(
        EventKind.STEPPED_DOWN,
        device_id="dev-1",
        reason="latency breach",
        from_variant="v1",
        to_variant="v2",
        details={"telemetry": [make_record(at=1.0).to_dict()]},
    )

    events = registry.list_events(device_id="dev-1")
    stepped = registry.list_events(kinds=[EventKind.STEPPED_DOWN])

    assert [event.kind for event in events] == [EventKind.REGISTERED, EventKind.STEPPED_DOWN]
    assert stepped[0].from_variant == "v1"
    assert stepped[0].to_variant == "v2"
    assert stepped[0].details["telemetry"][0]["latency_p95_ms"] == 5.0


def test_ladder_ordered_and_unknown_variant_rejected(
    controller: Controller, profile: DeviceProfile
) -> None:
    model, ladder = store_fake_ladder(controller, profile)

    rows = controller.registry.ladder(model.id, profile.fingerprint)

    assert [row.variant_id for row in rows] == ladder
    assert [row.ladder_rank for row in rows] == [0, 1, 2]
    with pytest.raises(UnknownVariantError, match="nope"):
        controller.registry.get_variant(model.id, profile.fingerprint, "nope")


def test_profile_insert_ignores_existing_row(registry: Registry, profile: DeviceProfile) -> None:
    # As when another device of the same new profile registered after this one looked.
    registry.register_device("dev-1", profile)

    with registry._database.session() as session:
        insert_profile(session, profile)
    registry.register_device("dev-2", profile)

    assert registry.profile_fingerprints() == [profile.fingerprint]
    assert registry.get_profile(profile.fingerprint) == profile


def _count_commits(registry: Registry) -> list[int]:
    commits = [0]

    def count(_connection) -> None:
        commits[0] += 1

    sa.event.listen(registry.database.engine, "commit", count)
    return commits


def test_register_devices_in_one_transaction(registry: Registry, profile: DeviceProfile) -> None:
    registry.register_device("dev-0", profile, agent_version="0.0.1")
    commits = _count_commits(registry)
    registrations = [
        DeviceRegistration(
            device_id=f"dev-{index}",
            profile=profile,
            agent_version="0.2.0",
            latency_scale=float(index),
            event=EventRow(
                at=datetime.now(UTC), kind=EventKind.REGISTERED, device_id=f"dev-{index}"
            ),
        )
        for index in range(50)
    ]

    rows = registry.register_devices(registrations)

    assert commits[0] == 1
    assert [row.device_id for row in rows] == [f"dev-{index}" for index in range(50)]
    stored = {row.device_id: row for row in registry.list_devices()}
    assert len(stored) == 50
    assert stored["dev-0"].agent_version == "0.2.0"
    assert stored["dev-49"].latency_scale == 49.0
    assert len(registry.list_events(kinds=[EventKind.REGISTERED])) == 50


def test_update_devices_skips_unknown(registry: Registry, profile: DeviceProfile) -> None:
    registry.register_device("dev-1", profile)
    events = [
        EventRow(at=datetime.now(UTC), kind=EventKind.CONNECTED, device_id=device_id)
        for device_id in ("dev-1", "ghost")
    ]

    rows = registry.update_devices(
        {"dev-1": {"state": DeviceState.ONLINE}, "ghost": {"state": DeviceState.ONLINE}},
        events=events,
    )

    assert list(rows) == ["dev-1"]
    assert registry.get_device("dev-1").state is DeviceState.ONLINE
    assert [event.device_id for event in registry.list_events()] == ["dev-1"]
    with pytest.raises(TypeError, match="profile"):
        registry.update_devices({"dev-1": {"profile": {}}})


def test_add_telemetry_many_stores_every_field(registry: Registry, profile: DeviceProfile) -> None:
    registry.register_device("dev-1", profile)
    registry.register_device("dev-2", profile)
    sent = [
        dataclasses.replace(
            make_record(at=1_700_000_000 + index, p95_ms=1.5 + index, device_id=device_id),
            temperature_c=None if index % 3 == 0 else 40.0 + index,
        )
        for index in range(300)
        for device_id in ("dev-1", "dev-2")
    ]

    registry.add_telemetry_many(sent)

    stored = registry.recent_telemetry("dev-1", limit=1000) + registry.recent_telemetry(
        "dev-2", limit=1000
    )
    assert sorted(stored, key=_record_key) == sorted(sent, key=_record_key)
    latest = datetime.fromtimestamp(1_700_000_299, UTC)
    assert registry.get_device("dev-1").last_seen == latest
    assert registry.get_device("dev-2").last_seen == latest


def _record_key(record: TelemetryRecord) -> tuple[str, int]:
    return (record.device_id, record.seq)
