from __future__ import annotations

import random

import pytest

from edgefleet.agent.backoff import Backoff
from edgefleet.agent.outbox import DiskOutbox, Outbox
from edgefleet.protos.v1 import fleet_pb2


def status(deployment_id: str) -> fleet_pb2.AgentMessage:
    return fleet_pb2.AgentMessage(status=fleet_pb2.DeploymentStatus(deployment_id=deployment_id))


def test_outbox_returns_messages_in_order():
    outbox = Outbox()
    outbox.put(status("a"))
    outbox.put(status("b"))

    assert outbox.get(0.01).status.deployment_id == "a"
    assert outbox.get(0.01).status.deployment_id == "b"
    assert outbox.get(0.01) is None


def test_outbox_drops_oldest_when_full():
    outbox = Outbox(max_messages=2)
    for name in ("a", "b", "c"):
        outbox.put(status(name))

    assert outbox.dropped == 1
    assert [outbox.get(0.01).status.deployment_id for _ in range(2)] == ["b", "c"]


def test_outbox_put_back_goes_first():
    outbox = Outbox()
    outbox.put(status("a"))
    outbox.put(status("b"))
    taken = outbox.get(0.01)

    outbox.put_back(taken)

    assert outbox.get(0.01).status.deployment_id == "a"


def test_backoff_doubles_up_to_cap_with_jitter():
    backoff = Backoff(initial_s=0.5, max_s=4.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]

    nominal = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, expected in zip(delays, nominal, strict=True):
        assert expected / 2 <= delay <= expected


def test_backoff_reset_starts_over():
    backoff = Backoff(initial_s=0.5, max_s=4.0)
    for _ in range(5):
        backoff.next_delay()

    backoff.reset()

    assert backoff.next_delay() <= 0.5


def test_backoff_rejects_invalid_bounds():
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        Backoff(initial_s=5.0, max_s=1.0)


def sample(seq: int) -> fleet_pb2.AgentMessage:
    return fleet_pb2.AgentMessage(telemetry=fleet_pb2.TelemetrySample(seq=seq))


def test_disk_outbox_survives_reopen(tmp_path):
    outbox = DiskOutbox(tmp_path / "outbox.sqlite3")
    outbox.put(sample(1))
    outbox.put(status("a"))
    outbox.close()

    reopened = DiskOutbox(tmp_path / "outbox.sqlite3")

    assert len(reopened) == 2
    assert reopened.get(0.01).telemetry.seq == 1
    assert reopened.get(0.01).status.deployment_id == "a"
    assert reopened.get(0.01) is None


def test_disk_outbox_drops_oldest_samples_only(tmp_path):
    outbox = DiskOutbox(tmp_path / "outbox.sqlite3", max_samples=3)
    outbox.put(status("first"))
    for seq in range(1, 6):
        outbox.put(sample(seq))

    assert outbox.dropped == 2
    assert outbox.get(0.01).status.deployment_id == "first"
    assert [outbox.get(0.01).telemetry.seq for _ in range(3)] == [3, 4, 5]
    outbox.close()
    assert DiskOutbox(tmp_path / "outbox.sqlite3").dropped == 2


def test_disk_outbox_put_back_goes_first(tmp_path):
    outbox = DiskOutbox(tmp_path / "outbox.sqlite3")
    outbox.put(sample(1))
    outbox.put(sample(2))
    taken = outbox.get(0.01)
    outbox.put_back(taken)
    outbox.put_back(status("late"))

    assert outbox.get(0.01).status.deployment_id == "late"
    assert outbox.get(0.01).telemetry.seq == 1
    assert outbox.get(0.01).telemetry.seq == 2


def test_disk_outbox_keeps_samples_until_acknowledged(tmp_path):
    outbox = DiskOutbox(tmp_path / "outbox.sqlite3")
    for seq in (1, 2, 3):
        outbox.put(sample(seq))
    taken = [outbox.get(0.01).telemetry.seq for _ in range(3)]

    outbox.acknowledge(2)

    assert taken == [1, 2, 3]
    assert outbox.get(0.01) is None
    assert len(outbox) == 1
    assert outbox.requeue() == 1
    assert outbox.get(0.01).telemetry.seq == 3


def test_disk_outbox_resends_in_flight_after_restart(tmp_path):
    outbox = DiskOutbox(tmp_path / "outbox.sqlite3")
    outbox.put(sample(1))
    outbox.get(0.01)
    outbox.close()

    reopened = DiskOutbox(tmp_path / "outbox.sqlite3")

    assert reopened.get(0.01).telemetry.seq == 1


def test_disk_outbox_without_receipts_forgets_sent(tmp_path):
    outbox = DiskOutbox(tmp_path / "outbox.sqlite3")
    outbox.put(sample(1))
    outbox.put(sample(2))
    outbox.get(0.01, keep_in_flight=False)
    outbox.get(0.01)

    assert outbox.forget_in_flight() == 1
    assert len(outbox) == 0


def test_disk_outbox_seq_grows_across_restarts(tmp_path):
    outbox = DiskOutbox(tmp_path / "outbox.sqlite3")
    assert [outbox.next_seq(), outbox.next_seq()] == [1, 2]
    outbox.close()

    assert DiskOutbox(tmp_path / "outbox.sqlite3").next_seq() == 3
